"""One rank of a tensor-parallel forward and backward on CPU processes (gloo), for test_tensor_parallel.py.

    python -m paddle.distributed.launch --nproc_per_node 2 tests/tensor_parallel_worker.py CKPT INPUTS.npz OUT

or with one process and no launcher: the whole model, the reference. Writes OUT/rank<r>.npz: the
last 8 positions' logits, the loss, and for every language-model parameter its local slice, the whole parameter and
the whole gradient (gathered from all ranks).
"""
import sys

import paddlemix  # noqa: F401  (thread count before paddle)
import numpy as np
import paddle
import paddle.distributed as dist

from paddlemix.models.internvl2 import InternVLChatModel
from paddlemix.models.internvl2.tensor_parallel import TensorParallel, gather_parameter


def main(checkpoint, inputs, out):
    tp, rank = None, 0
    if dist.get_world_size() > 1:
        dist.init_parallel_env()
        rank = dist.get_rank()
        tp = TensorParallel(dist.get_world_size(), rank, dist.new_group(list(range(dist.get_world_size()))))
    model = InternVLChatModel.from_pretrained(checkpoint, dtype="float32", cpu_bf16_weights=False if tp is None
                                              else None, tensor_parallel=tp)
    data = np.load(inputs)
    model.img_context_token_id = int(data["img_context_token_id"])
    out_dict = model(paddle.to_tensor(data["pixel_values"]), paddle.to_tensor(data["input_ids"]),
                     attention_mask=paddle.to_tensor(data["attention_mask"]), labels=paddle.to_tensor(data["labels"]))
    out_dict["loss"].backward()
    record = {"logits": out_dict["logits"][:, -8:].numpy(), "loss": out_dict["loss"].numpy()}
    llm = model.language_model
    for name, param in llm.named_parameters():
        record["local/" + name] = param.numpy()
        record["param/" + name] = gather_parameter(llm.config, name, param.detach(), tp).numpy()
        record["grad/" + name] = gather_parameter(llm.config, name, param.grad, tp).numpy()
    for name, param in model.mlp1.named_parameters():
        record["grad/mlp1." + name] = param.grad.numpy()
    np.savez(f"{out}/rank{rank}.npz", **record)


if __name__ == "__main__":
    main(*sys.argv[1:])
