"""Per-device memory of fine-tuning, estimated from a checkpoint's config.json.

The 2nd-finetune scripts print it before they launch and stop when the cards are too small; the
README's table comes from it:

    python -m paddlemix.models.internvl2.memory CONFIG_OR_MODEL_DIR --mode lora --tensor-parallel 8 \\
        --sharding 1 --device-gib 80

Parameter counts are exact: the model is built under paddle.LazyGuard (no memory) and split as
tensor_parallel.py splits it. The rest is the usual arithmetic, stated so it can be checked:
  * weights: every parameter in the compute dtype (bf16 for the scripts' O2; fp32 on CPU);
  * gradients: float32, one per trainable parameter (amp_master_grad keeps fp32 gradients);
  * optimizer: AdamW's two float32 moments, plus a float32 master copy under bf16, split over the
    sharding ranks (stage1);
  * activations with recomputation: each decoder layer keeps its input; one layer at a time is
    recomputed (its projections, MLP and, without flash attention, the score matrices); the
    logits are float32 over the whole vocabulary (the head gathers them) with the softmax and its
    gradient; the frozen ViT runs without gradients, one layer at a time.
"""
import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import paddle

from .config import InternVLChatConfig
from .tensor_parallel import split_layout

GIB = 2 ** 30
LLM_LORA_LAYERS = (".self_attn.qkv_proj", ".self_attn.o_proj", ".mlp.gate_up_proj", ".mlp.down_proj")


def peak_host_rss_bytes():
    """This process's own peak resident memory. On Linux from VmHWM, not ru_maxrss: a process started
    by fork and exec inherits its parent's high-water mark in ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # not Linux
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


@dataclass
class Plan:
    """How a run trains: what the estimate depends on besides the config."""

    mode: str = "lora"  # "full": LLM + mlp1; "lora": adapters on the LLM; the ViT is frozen in both
    tensor_parallel: int = 1
    sharding: int = 1  # ranks the optimizer states are split over (stage1)
    per_device_batch: int = 1
    max_seq_length: int = 4096
    tiles_per_sample: int = 7  # --max_dynamic_patch 6 plus the thumbnail
    lora_rank: int = 16
    dtype: str = "bfloat16"
    flash_attention: bool = True  # GPUs; on CPU the score matrices are materialised


def parameter_shapes(config):
    """{name: shape} of every parameter, without allocating any."""
    from .modeling import InternVLChatModel

    with paddle.LazyGuard():
        model = InternVLChatModel(config)
    return {name: list(param.shape) for name, param in model.named_parameters()}


def _lora_count(config, module, shape, plan, tp):
    """Parameters of one LoRA adapter on a [in, out] weight, as a rank holds them (split as
    tensor_parallel.split_layout splits A [in, r] and B [r, out])."""
    fan_in, fan_out = shape
    if split_layout(config, f"{module}.lora_A", tp) is not None:
        fan_in //= plan.tensor_parallel
    if split_layout(config, f"{module}.lora_B", tp) is not None:
        fan_out //= plan.tensor_parallel
    return plan.lora_rank * (fan_in + fan_out)


def estimate(config, plan, shapes=None):
    """{part: bytes per device} for weights, gradients, optimizer, activations and their total."""
    shapes = shapes or parameter_shapes(config)
    llm, tp = config.llm, SimpleNamespace(degree=plan.tensor_parallel)
    element = 2 if plan.dtype in ("bfloat16", "float16") else 4
    held = trainable = 0
    for name, shape in shapes.items():
        local = math.prod(shape)
        if name.startswith("language_model."):
            inner = name[len("language_model."):]
            if split_layout(llm, inner, tp) is not None:
                local //= plan.tensor_parallel
            if plan.mode == "full":
                trainable += local
            elif inner.endswith(".weight") and inner[:-len(".weight")].endswith(LLM_LORA_LAYERS):
                adapter = _lora_count(llm, inner[:-len(".weight")], shape, plan, tp)
                trainable, held = trainable + adapter, held + adapter
        elif name.startswith("mlp1.") and plan.mode == "full":
            trainable += local
        held += local
    tokens = plan.per_device_batch * plan.max_seq_length
    hidden, layers = llm.hidden_size, llm.num_hidden_layers
    qkv = (llm.num_attention_heads + 2 * llm.num_key_value_heads) * llm.head_dim
    recomputed = tokens * (4 * hidden + (qkv + llm.num_attention_heads * llm.head_dim
                                         + 3 * llm.intermediate_size) // plan.tensor_parallel) * element
    if not plan.flash_attention:
        recomputed += 2 * tokens * tokens * (llm.num_attention_heads // plan.tensor_parallel) * 4
    vision = config.vision
    patches = (vision.image_size // vision.patch_size) ** 2 + 1
    vit = plan.per_device_batch * plan.tiles_per_sample * patches * (4 * vision.hidden_size
                                                                     + vision.intermediate_size) * element
    parts = {
        "weights": held * element,
        "gradients": trainable * 4,
        "optimizer": trainable * (12 if element == 2 else 8) // plan.sharding,
        "activations": layers * tokens * hidden * element + recomputed + 3 * tokens * llm.vocab_size * 4 + vit,
    }
    parts["total"] = sum(parts.values())
    return parts


def load_config(path):
    """The InternVLChatConfig of a model folder or of a config.json file."""
    if os.path.isdir(path):
        return InternVLChatConfig.from_pretrained(path)
    with open(path, encoding="utf-8") as f:
        return InternVLChatConfig.from_dict(json.load(f))


def describe(parts):
    return ", ".join(f"{part} {value / GIB:.1f} GiB" for part, value in parts.items())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a model folder or its config.json")
    parser.add_argument("--mode", choices=("full", "lora"), default="lora")
    parser.add_argument("--tensor-parallel", type=int, default=1)
    parser.add_argument("--sharding", type=int, default=1, help="ranks the optimizer states are split over")
    parser.add_argument("--per-device-batch", type=int, default=1)
    parser.add_argument("--max-seq-length", type=int, default=4096)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--device-gib", type=float, help="stop with an error when the estimate exceeds this")
    parser.add_argument("--json", action="store_true", help="print the parts in bytes as JSON")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except (OSError, ValueError) as error:  # ConfigError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    plan = Plan(mode=args.mode, tensor_parallel=args.tensor_parallel, sharding=args.sharding,
                per_device_batch=args.per_device_batch, max_seq_length=args.max_seq_length,
                lora_rank=args.lora_rank, dtype=args.dtype)
    parts = estimate(config, plan)
    print(json.dumps(parts) if args.json else f"estimated memory per device: {describe(parts)}")
    if args.device_gib and parts["total"] > args.device_gib * GIB:
        print(f"error: the estimate of {parts['total'] / GIB:.1f} GiB per device exceeds the "
              f"{args.device_gib:g} GiB of each card; use more cards or a larger tensor-parallel degree",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
