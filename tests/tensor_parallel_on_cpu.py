"""internvl_chat_finetune.py with --tensor_parallel_degree on CPU processes (a test launcher).

fleet's TensorParallel wrapper broadcasts each step's inputs from the first rank of the tensor-
parallel group, and its helper asserts a GPU, an XPU or a custom device first (so does the
script's own check, lifted here too). The inputs are
already the same on every rank of the group (the data is split by data-parallel rank only), so on
CPU this broadcasts them with plain gloo broadcasts instead. The model's own tensor-parallel layers
(paddlemix/models/internvl2/tensor_parallel.py) need nothing: they use gloo's all_reduce and
all_gather as they are.

    python -m paddle.distributed.launch --nproc_per_node 2 tests/tensor_parallel_on_cpu.py <script arguments>
"""
import sys

import paddlemix  # noqa: F401  (thread count before paddle)
import paddle
import paddle.distributed as dist
from paddle.distributed.fleet.meta_parallel import tensor_parallel as fleet_tensor_parallel

from paddlemix.examples.internvl2 import internvl_chat_finetune as finetune


def broadcast_input_data_on_cpu(hcg, *inputs, **kwargs):
    group, src = hcg.get_model_parallel_group(), hcg.get_model_parallel_group_src_rank()

    def broadcast(value):
        if isinstance(value, paddle.Tensor):
            dist.broadcast(value, src=src, group=group)
        elif isinstance(value, (list, tuple)):
            for item in value:
                broadcast(item)
        elif isinstance(value, dict):
            for item in value.values():
                broadcast(item)

    broadcast(inputs)
    broadcast(kwargs)
    return inputs, kwargs


if __name__ == "__main__":
    fleet_tensor_parallel.broadcast_input_data = broadcast_input_data_on_cpu
    finetune.tensor_parallel_runs_on = lambda device: True
    finetune.cli(sys.argv[1:])
