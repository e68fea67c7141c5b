"""Getting an InternVLChatModel ready for fine-tuning, and turning the result back into a checkpoint.

Trainability is decided in one place (`set_trainable`) from flags that mean what they
say, whatever order they are given in:
  * ViT: trained unless freeze_backbone or use_backbone_lora; unfreeze_vit_layers=k
    trains its last |k| layers anyway (the official script's negative k; a positive k
    there would unfreeze all layers after the first k).
  * LLM: trained unless freeze_llm or use_llm_lora; unfreeze_lm_head trains the head anyway.
  * mlp1: trained unless freeze_mlp.
  * LoRA adapters: always trained.
A part whose parameters are all frozen runs in eval mode (no drop path), like the
official frozen LLM.

LoRA uses paddleformers' LoRALinear on the fused Linear layers. paddleformers'
LoRAModel wrapper is not used: it expects a paddleformers PretrainedModel config and
would freeze mlp1 and the ViT along with the LLM.
"""
import logging
import os
import re
import shutil

import numpy as np
import paddle
from paddle import nn
from paddleformers.peft import LoRAConfig
from paddleformers.peft.lora import LoRALinear

from .conversation import get_conv_template
from .kernels import Linear
from .tensor_parallel import parallel_lora

logger = logging.getLogger(__name__)

LLM_LORA_TARGETS = r"language_model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))"
VIT_LORA_TARGETS = r"vision_model\.encoder\.layers\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
LORA_DROPOUT = 0.05  # as the official wrap_llm_lora / wrap_backbone_lora
# Files of a checkpoint folder that export_checkpoint writes itself rather than copies.
_WEIGHT_FILE = re.compile(r".*\.(safetensors|bin|pdparams|pt|pth)$|.*\.index\.json$|^config\.json$")


def configure(model, **fields):
    """Override config fields (template, select_layer, ps_version, force_image_size, dynamic_image_size,
    use_thumbnail, min/max_dynamic_patch) on the config that is saved and on the model that runs."""
    config = model.config
    for key, value in fields.items():
        if not hasattr(config, key):
            raise AttributeError(f"InternVLChatConfig has no field {key!r}")
        setattr(config, key, value)
    model.template = config.template
    model.conv_template = get_conv_template(config.template)
    model.system_message = model.conv_template.system_message
    model.select_layer = config.select_layer
    model.ps_version = config.ps_version
    model.num_image_token = config.num_image_token


def set_drop_path_rate(model, rate):
    """Stochastic depth rising linearly from 0 at the first ViT layer to `rate` at the last (as vision.py builds it)."""
    layers = model.vision_model.encoder.layers
    for layer, layer_rate in zip(layers, np.linspace(0, rate, len(layers))):
        layer.drop_path1.rate = layer.drop_path2.rate = float(layer_rate)
    model.config.vision.drop_path_rate = rate
    model.config.raw.setdefault("vision_config", {})["drop_path_rate"] = rate


def set_gradient_checkpointing(model, enabled=True):
    """Recompute each ViT and decoder layer's activations in backward instead of keeping them."""
    model.vision_model.encoder.gradient_checkpointing = enabled
    model.language_model.gradient_checkpointing = enabled
    if enabled:
        logging.getLogger(_RECOMPUTE_LOGGER).addFilter(_drop_recompute_input_warning)


# Paddle warns for every layer whose input needs no gradient (LoRA over frozen embeddings)
# that recompute is unnecessary. That holds for reentrant recompute only: the non-reentrant
# one used here still computes the adapters' gradients, so the warning is noise, once per
# layer and step.
_RECOMPUTE_LOGGER = "paddle.distributed.fleet.utils.log_util"


def _drop_recompute_input_warning(record):
    return not record.getMessage().startswith("[Recompute]: None of the inputs")


# --- vocabulary -----------------------------------------------------------------------
def resize_token_embeddings(model, vocab_size):
    """Grow the embeddings and LM head to `vocab_size` rows; new rows get the mean of the old ones.

    The official script does this for tokens its tokenizer adds (InternVL checkpoints
    already have them); the mean keeps new tokens' logits ordinary instead of random.
    Returns the number of rows added.
    """
    llm = model.language_model
    old_embeddings = llm.embed_tokens.weight
    added = vocab_size - model.config.llm.vocab_size  # a tensor-parallel rank holds only its rows
    if added <= 0:
        return 0
    if llm.tensor_parallel is not None:
        raise ValueError(f"the tokenizer needs {vocab_size} embedding rows and the checkpoint has "
                         f"{model.config.llm.vocab_size}; growing them is not supported with tensor parallelism "
                         "(add the rows in a run without it first)")
    hidden, dtype = old_embeddings.shape[1], old_embeddings.dtype
    embeddings = paddle.concat([old_embeddings, old_embeddings.mean(axis=0, keepdim=True).tile([added, 1])])
    head = llm.lm_head.weight  # [hidden, vocab]
    head = paddle.concat([head, head.mean(axis=1, keepdim=True).tile([1, added])], axis=1)
    with _default_dtype(dtype):
        llm.embed_tokens = nn.Embedding(vocab_size, hidden)
        llm.lm_head = Linear(hidden, vocab_size, bias_attr=False)
    llm.embed_tokens.weight.set_value(embeddings)
    llm.lm_head.weight.set_value(head)
    model.config.llm.vocab_size = vocab_size
    model.config.raw["llm_config"]["vocab_size"] = vocab_size
    logger.info("resized the token embeddings to %d rows (%d new, initialised to the mean)", vocab_size, added)
    return added


def tokenizer_vocab_size(tokenizer):
    """Rows the embeddings need: len(tokenizer), or more if a special token's id lies beyond it."""
    ids = [tokenizer.convert_tokens_to_ids(token) for token in ("<img>", "</img>", "<IMG_CONTEXT>")]
    return max([len(tokenizer)] + [index + 1 for index in ids if isinstance(index, int)])


def untie_word_embeddings(model):
    """A tied head gets its own copy: fine-tuning updates head and embeddings separately and saves both."""
    if model.config.llm.tie_word_embeddings:
        model.config.llm.tie_word_embeddings = False
        model.config.raw["llm_config"]["tie_word_embeddings"] = False
        logger.info("untied the LM head from the embeddings; both are trained and saved separately")


# --- LoRA -------------------------------------------------------------------------------
def add_lora(model, target_pattern, rank):
    """Wrap every Linear layer whose full name matches `target_pattern` in a LoRALinear (alpha = 2 * rank)."""
    lora_config = LoRAConfig(r=rank, lora_alpha=2 * rank, lora_dropout=LORA_DROPOUT, target_modules=[target_pattern])
    names = [name for name, layer in model.named_sublayers()
             if isinstance(layer, nn.Linear) and not isinstance(layer, LoRALinear) and not hasattr(layer, "lora_A")
             and re.fullmatch(target_pattern, name)]
    if not names:
        raise ValueError(f"no Linear layer matches the LoRA targets {target_pattern!r}")
    for name in names:
        parent, attr = _parent(model, name)
        base = getattr(parent, attr)
        parallel = parallel_lora(base, lora_config.r, lora_config.lora_alpha, lora_config.lora_dropout)
        if parallel is not None:  # a tensor-parallel slice: the adapter is split as its weight is
            setattr(parent, attr, parallel)
            continue
        in_features, out_features = base.weight.shape
        with _default_dtype(base.weight.dtype):
            lora = LoRALinear(in_features, out_features, r=lora_config.r, lora_alpha=lora_config.lora_alpha,
                              lora_dropout=lora_config.lora_dropout,
                              bias_attr=False if base.bias is None else None)
        lora.weight = base.weight
        if base.bias is not None:
            lora.bias = base.bias
        setattr(parent, attr, lora)
    logger.info("LoRA rank %d (alpha %d) on %d layers matching %s", rank, 2 * rank, len(names), target_pattern)
    return len(names)


def merge_lora(model):
    """Fold every adapter into its weight and put a plain Linear back; returns the number merged."""
    names = [name for name, layer in model.named_sublayers() if isinstance(layer, LoRALinear)
             or hasattr(layer, "merged_layer")]
    for name in names:
        parent, attr = _parent(model, name)
        lora = getattr(parent, attr)
        if hasattr(lora, "merged_layer"):  # tensor-parallel
            setattr(parent, attr, lora.merged_layer())
            continue
        lora.merge()
        with paddle.LazyGuard():
            plain = Linear(*lora.weight.shape, bias_attr=False if lora.bias is None else None)
        plain.weight = lora.weight
        if lora.bias is not None:
            plain.bias = lora.bias
        setattr(parent, attr, plain)
    return len(names)


def _parent(model, name):
    *path, attr = name.split(".")
    parent = model
    for part in path:
        parent = getattr(parent, part)
    return parent, attr


class _default_dtype:
    """Create parameters in `dtype` (LoRA adapters must match a bf16 base layer)."""

    def __init__(self, dtype):
        self.dtype = str(dtype).replace("paddle.", "")

    def __enter__(self):
        self.previous = paddle.get_default_dtype()
        paddle.set_default_dtype(self.dtype)

    def __exit__(self, *exc_info):
        paddle.set_default_dtype(self.previous)


# --- trainability -------------------------------------------------------------------------
def set_trainable(model, freeze_llm=False, freeze_backbone=False, freeze_mlp=False, unfreeze_vit_layers=0,
                  unfreeze_lm_head=False, use_llm_lora=0, use_backbone_lora=0):
    """Mark parameters trainable by the rules in the module docstring; returns the trainable names."""
    vit_layers = model.vision_model.encoder.layers
    extra = []
    if unfreeze_vit_layers:
        extra += list(vit_layers[len(vit_layers) - abs(unfreeze_vit_layers):].parameters())
    if unfreeze_lm_head:
        extra += list(model.language_model.lm_head.parameters())
    frozen_parts = []
    if freeze_backbone or use_backbone_lora:
        frozen_parts.append(model.vision_model)
    if freeze_llm or use_llm_lora:
        frozen_parts.append(model.language_model)
    if freeze_mlp:
        frozen_parts.append(model.mlp1)
    frozen = {id(param) for part in frozen_parts for param in part.parameters()} - {id(param) for param in extra}
    trainable = []
    for name, param in model.named_parameters():
        param.stop_gradient = id(param) in frozen and ".lora_" not in name
        if not param.stop_gradient:
            trainable.append(name)
    return trainable


def keep_frozen_in_eval(model):
    """Run fully frozen parts (ViT, mlp1, LLM) in eval mode even after Trainer's model.train().

    Returns the names of those parts. A forward pre-hook re-applies eval() at every step.
    """
    parts = {name: getattr(model, name) for name in ("vision_model", "mlp1", "language_model")}
    frozen = {name: part for name, part in parts.items() if all(p.stop_gradient for p in part.parameters())}

    def to_eval(layer, inputs):
        for part in frozen.values():
            part.eval()

    if frozen:
        model.register_forward_pre_hook(to_eval)
    return sorted(frozen)


# --- export --------------------------------------------------------------------------------
def export_checkpoint(model, source_dir, out_dir, dtype="bfloat16"):
    """Merge LoRA and write an original-layout checkpoint that from_pretrained and chat_demo.py load.

    The tokenizer and other side files (generation_config.json, remote code...) are copied
    from `source_dir`. Everything is written to a temporary folder first and moved in with
    config.json last, so an interrupted export never leaves a loadable but partial model.
    With tensor parallelism every rank calls it; rank 0 writes the gathered weights.
    """
    if os.path.realpath(source_dir) == os.path.realpath(out_dir):
        raise ValueError(f"refusing to export over the source checkpoint '{source_dir}'")
    merged = merge_lora(model)
    if merged:
        logger.info("merged %d LoRA adapters into their weights", merged)
    tp = model.language_model.tensor_parallel
    if tp is not None and tp.rank != 0:
        model.save_pretrained(None)  # takes part in the gathers
        return
    os.makedirs(out_dir, exist_ok=True)
    staging = os.path.join(out_dir, f".export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, dtype=dtype)
    for name in sorted(os.listdir(source_dir)):
        source = os.path.join(source_dir, name)
        if os.path.isfile(source) and not _WEIGHT_FILE.match(name):
            shutil.copyfile(source, os.path.join(staging, name))
    for name in os.listdir(out_dir):  # stale weights of an earlier export would mix with the new ones
        if _WEIGHT_FILE.match(name) and os.path.isfile(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    for name in sorted(os.listdir(staging), key=lambda n: n == "config.json"):
        os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    os.rmdir(staging)
    logger.info("exported the fine-tuned model to %s (%s; tokenizer files from %s)", out_dir, dtype, source_dir)
