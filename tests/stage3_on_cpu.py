"""internvl_chat_finetune.py with Paddle's sharding stage3 on CPU processes (a test launcher).

Stage3 itself is plain Python over broadcast/all_reduce/all_gather, which gloo provides on CPU;
Paddle only refuses CPU up front. This lifts exactly that, so the tests can run our model,
freezing, LoRA and the export through the real stage3 code:
  * group_sharded_parallel's device assert and GroupShardedStage3's CUDA assert;
  * `_device2cpu`, which frees the tensor it copied from: on CPU `.cpu()` is the same memory;
  * the script's own refusal of stage3 on CPU.
It also slices much smaller parameters than Paddle's default, as a real model's would be.

    python -m paddle.distributed.launch --nproc_per_node 2 tests/stage3_on_cpu.py <script arguments>
"""
import logging
import sys

import paddlemix  # noqa: F401  (thread count before paddle)
import paddle.distributed.sharding as sharding
from paddle.base import core
from paddle.distributed.fleet.meta_parallel.sharding import group_sharded_stage3 as stage3

from paddlemix.examples.internvl2 import internvl_chat_finetune as finetune

logger = logging.getLogger("stage3_on_cpu")
# Parameters above this many elements are sliced across ranks (Paddle's default is 2**20, which
# would leave a tiny model's layers whole); small enough that the tiny layers are sliced too.
TINY_SEGMENT = 2**10


def group_sharded_parallel_on_cpu(model, optimizer, level, scaler=None, group=None, offload=False,
                                  sync_buffers=False, buffer_max_size=2**23, segment_size=2**20, sync_comm=False,
                                  dp_group=None, exclude_layer=None):
    assert level == "p_g_os", level
    compiled_with_cuda = core.is_compiled_with_cuda
    core.is_compiled_with_cuda = lambda: True
    try:
        model = stage3.GroupShardedStage3(model, optimizer=optimizer, group=group, sync_buffers=sync_buffers,
                                          segment_size=TINY_SEGMENT, offload=offload, sync_comm=sync_comm,
                                          dp_group=dp_group, device="cpu", exclude_layer=exclude_layer)
    finally:
        core.is_compiled_with_cuda = compiled_with_cuda
    logger.info("GroupShardedStage3 on CPU: %d parameters sliced over %d ranks", len(model._param2buffer),
                model._group.nranks)
    return model, optimizer, scaler


def device2cpu_copy(tensor, convert_dtype=False):
    return (tensor.astype("float32") if convert_dtype else tensor).clone()


if __name__ == "__main__":
    sharding.group_sharded_parallel = group_sharded_parallel_on_cpu
    stage3._device2cpu = device2cpu_copy
    finetune.stage3_runs_on = lambda device: True
    finetune.cli(sys.argv[1:])
