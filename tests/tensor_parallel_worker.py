"""One rank of a tensor-parallel training step on CPU processes (gloo), for test_tensor_parallel.py.

    python -m paddle.distributed.launch --nproc_per_node 2 tests/tensor_parallel_worker.py CKPT INPUTS.npz OUT MODE

or with one process and no launcher: the whole model, the reference. MODE "full" trains every
language-model weight, "lora" adds LoRA adapters (rank 4, no dropout, factors drawn from a fixed seed
at their whole shape, so that both runs start from the same adapters). One forward, backward and
SGD step, then the export. Writes OUT/rank<r>.npz: the last 8 positions' logits, the loss, and for
every language-model parameter its local slice, the whole parameter and the whole gradient (gathered
from all ranks), and after the step the whole updated parameter. Rank 0 saves the model as loaded
to OUT/start ("full") and exports the stepped one to OUT/export.
"""
import sys

import paddlemix  # noqa: F401  (thread count before paddle)
import numpy as np
import paddle

from paddlemix.models.internvl2 import InternVLChatModel
from paddlemix.models.internvl2 import train_model as tm
from paddlemix.models.internvl2.tensor_parallel import TensorParallel, gather_parameter, local_slice


def set_lora_factors(model, tp):
    """Adapters drawn at their whole shape from one seed, each rank keeping its slice."""
    rng = np.random.default_rng(1)
    llm = model.language_model
    for name, layer in llm.named_sublayers():
        if not hasattr(layer, "lora_A"):
            continue
        in_features, out_features = gather_parameter(llm.config, f"{name}.weight", layer.weight.detach(), tp).shape
        rank = layer.lora_A.shape[1]
        for factor, shape in (("lora_A", (in_features, rank)), ("lora_B", (rank, out_features))):
            whole = paddle.to_tensor(rng.standard_normal(shape).astype(np.float32) * 0.05)
            getattr(layer, factor).set_value(local_slice(llm.config, f"{name}.{factor}", whole, tp))


def main(checkpoint, inputs, out, mode):
    tp = TensorParallel.over_all_processes()
    rank = 0 if tp is None else tp.rank
    model = InternVLChatModel.from_pretrained(checkpoint, dtype="float32", cpu_bf16_weights=False if tp is None
                                              else None, tensor_parallel=tp)
    llm = model.language_model
    if mode == "lora":
        tm.LORA_DROPOUT = 0.0
        tm.add_lora(model, tm.LLM_LORA_TARGETS, 4)
        set_lora_factors(model, tp)
        tm.set_trainable(model, use_llm_lora=4, freeze_backbone=True)
    else:
        tm.set_trainable(model, freeze_backbone=True)
        model.save_pretrained(f"{out}/start", dtype="float32")  # gathered as loaded
    data = np.load(inputs)
    model.img_context_token_id = int(data["img_context_token_id"])
    out_dict = model(paddle.to_tensor(data["pixel_values"]), paddle.to_tensor(data["input_ids"]),
                     attention_mask=paddle.to_tensor(data["attention_mask"]), labels=paddle.to_tensor(data["labels"]))
    out_dict["loss"].backward()
    record = {"logits": out_dict["logits"][:, -8:].numpy(), "loss": out_dict["loss"].numpy()}
    trainable = [(name, param) for name, param in llm.named_parameters() if not param.stop_gradient]
    for name, param in trainable:
        record["local/" + name] = param.numpy()
        record["param/" + name] = gather_parameter(llm.config, name, param.detach(), tp).numpy()
        record["grad/" + name] = gather_parameter(llm.config, name, param.grad, tp).numpy()
    for name, param in model.mlp1.named_parameters():
        record["grad/mlp1." + name] = param.grad.numpy()
    # SGD: the step is the gradient times the rate, so it inherits the gradient's agreement (AdamW's
    # first step, lr * g / (|g| + eps), turns summation-order noise in near-zero gradients into a
    # sizeable part of lr).
    optimizer = paddle.optimizer.SGD(learning_rate=0.1, parameters=[param for _, param in trainable]
                                     + list(model.mlp1.parameters()))
    optimizer.step()
    for name, param in trainable:
        record["stepped/" + name] = gather_parameter(llm.config, name, param.detach(), tp).numpy()
    for name, param in llm.named_parameters():
        if param.stop_gradient:
            record["local/" + name] = param.numpy()
    tm.export_checkpoint(model, checkpoint, f"{out}/export", dtype="float32")
    np.savez(f"{out}/rank{rank}.npz", **record)


if __name__ == "__main__":
    main(*sys.argv[1:])
