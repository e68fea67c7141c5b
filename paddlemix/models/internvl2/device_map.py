"""Spreading one model over several GPUs for inference (InternVL2-40B and -Llama3-76B).

A device map names checkpoint modules (`vision_model`, `language_model.model.layers.7`,
...) and gives each a GPU index, like the `device_map` the official model cards pass to
transformers. Every parameter goes to the device of the deepest module that contains it;
the language model then moves its activations from layer to layer (llm.LanguageModel).
"""
import math

import paddle

from .llm import checkpoint_names

# Modules the official split keeps on GPU 0 beside the ViT; both families' names are listed.
_FIRST_GPU_MODULES = (
    "vision_model",
    "mlp1",
    "language_model.model.tok_embeddings",
    "language_model.model.embed_tokens",
    "language_model.output",
    "language_model.model.norm",
    "language_model.lm_head",
)


def split_model_layers(num_layers, num_gpus):
    """{module name: GPU index} of the official `split_model` for an LLM with `num_layers` layers.

    GPU 0 also runs the ViT, so it counts as half a GPU: every GPU gets
    ceil(num_layers / (num_gpus - 0.5)) consecutive layers, GPU 0 half of that (rounded
    up), and the last layer goes back to GPU 0 beside the final norm and LM head. The
    official function also names layers past the last one when the counts overshoot;
    those name no module and are left out here.
    """
    if num_layers < 1 or num_gpus < 1:
        raise ValueError(f"need at least one layer and one GPU, got {num_layers} layers and {num_gpus} GPUs")
    per_gpu = math.ceil(num_layers / (num_gpus - 0.5))
    counts = [math.ceil(per_gpu * 0.5)] + [per_gpu] * (num_gpus - 1)
    owners = [gpu for gpu, count in enumerate(counts) for _ in range(count)][:num_layers]
    device_map = {f"language_model.model.layers.{layer}": gpu for layer, gpu in enumerate(owners)}
    device_map.update({name: 0 for name in _FIRST_GPU_MODULES})
    device_map[f"language_model.model.layers.{num_layers - 1}"] = 0
    return device_map


def resolve_device_map(device_map, num_layers):
    """`device_map` as given, or for "auto" the official split over all visible devices (None for one)."""
    if device_map != "auto":
        return device_map
    count = paddle.device.device_count()
    if count < 1:
        raise ValueError("device_map='auto' needs GPUs (or other accelerators); none are visible")
    return split_model_layers(num_layers, count) if count > 1 else None


def module_device(checkpoint_key, device_map):
    """The device of the deepest module in `device_map` containing checkpoint tensor `checkpoint_key`."""
    parts = checkpoint_key.split(".")
    for end in range(len(parts), -1, -1):
        prefix = ".".join(parts[:end])
        if prefix in device_map:
            return device_name(device_map[prefix])
    raise ValueError(f"the device map places no module that contains '{checkpoint_key}'")


def device_name(device):
    """A paddle device string: GPU index 1 -> 'gpu:1' ('npu:1' on NPU builds); names pass through.

    On a CPU-only build every index is the one CPU, which lets a map be tried out there.
    """
    if isinstance(device, str):
        return device
    kind = paddle.get_device().split(":")[0]
    return "cpu" if kind == "cpu" else f"{kind}:{device}"


def language_model_placement(llm_config, device_map):
    """(device of each decoder layer, device of the final norm and LM head) under `device_map`.

    The ViT, mlp1 and token embeddings must share a device (image features are written
    into the embeddings), and so must the final norm and the LM head.
    """

    def device_of(name):
        return module_device("language_model." + checkpoint_names(llm_config, name)[0], device_map)

    for first, second in (
        (module_device("vision_model.embeddings.class_embedding", device_map), device_of("embed_tokens.weight")),
        (module_device("mlp1.0.weight", device_map), device_of("embed_tokens.weight")),
        (device_of("norm.weight"), device_of("lm_head.weight")),
    ):
        if first != second:
            raise ValueError("the device map splits modules that must share a device: vision_model, mlp1 and "
                             "the token embeddings; the final norm and the LM head")
    layers = [device_of(f"layers.{i}.input_layernorm.weight") for i in range(llm_config.num_hidden_layers)]
    return layers, device_of("lm_head.weight")
