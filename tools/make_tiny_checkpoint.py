"""Write a tiny, randomly initialised InternVL2 checkpoint in the original Hugging Face layout.

Real weights cannot be downloaded here, so parity tests run on a checkpoint that keeps every
structural switch of a real ``config.json`` (norm types, biases, GQA, rope scaling, template,
tokenizer and vocabulary) but has small widths and few layers. Weight names and shapes follow the
original OpenGVLab InternVL code (Linear weights are [out, in]).

Usage:
    python tools/make_tiny_checkpoint.py --config CONFIG_JSON --tokenizer TOKENIZER_DIR --out DIR
"""

import argparse
import copy
import json
import logging
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from paddlemix.models.internvl2.checkpoint import save_checkpoint  # noqa: E402

logger = logging.getLogger("make_tiny_checkpoint")

DEFAULT_SIZES = {
    "vision_hidden": 64,
    "vision_heads": 4,
    "vision_intermediate": 128,
    "vision_layers": 2,
    "llm_hidden": 64,
    "llm_heads": 4,
    "llm_kv_heads": 2,
    "llm_intermediate": 128,
    "llm_layers": 2,
}
SIDE_FILES = ("generation_config.json", "preprocessor_config.json")


def tokenizer_size(tokenizer_dir):
    """One more than the largest token id any tokenizer file in ``tokenizer_dir`` defines."""
    ids = []

    def load(name):
        path = os.path.join(tokenizer_dir, name)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    vocab = load("vocab.json")
    if vocab:
        ids.append(max(vocab.values()))
    added = load("added_tokens.json")
    if added:
        ids.append(max(added.values()))
    tok_config = load("tokenizer_config.json") or {}
    ids.extend(int(i) for i in tok_config.get("added_tokens_decoder", {}))
    tok_json = load("tokenizer.json")
    if tok_json:
        model_vocab = tok_json.get("model", {}).get("vocab") or {}
        ids.append(max(model_vocab.values()) if isinstance(model_vocab, dict) else len(model_vocab) - 1)
        ids.extend(t["id"] for t in tok_json.get("added_tokens", []))
    spm_path = os.path.join(tokenizer_dir, "tokenizer.model")
    if os.path.isfile(spm_path):
        import sentencepiece  # only needed for sentencepiece tokenizers

        ids.append(sentencepiece.SentencePieceProcessor(model_file=spm_path).get_piece_size() - 1)
    if not ids:
        raise ValueError(f"no tokenizer files (vocab.json, tokenizer.json, tokenizer.model) in '{tokenizer_dir}'")
    return max(ids) + 1


def _resample(values, length):
    """Linearly resample a per-frequency factor list (e.g. Phi-3 longrope) to ``length`` entries."""
    old = np.asarray(values, dtype=np.float64)
    return np.interp(np.linspace(0, len(old) - 1, length), np.arange(len(old)), old).tolist()


def shrink_config(config, vocab_size, sizes):
    """Copy of an InternVLChatConfig dict with small widths; every structural switch is kept."""
    for side, hidden, heads in (("vision", "vision_hidden", "vision_heads"), ("llm", "llm_hidden", "llm_heads")):
        if sizes[hidden] % sizes[heads]:
            raise ValueError(f"--{side}-hidden {sizes[hidden]} is not divisible by --{side}-heads {sizes[heads]}")
    config = copy.deepcopy(config)
    vision = config["vision_config"]
    vision.update(
        hidden_size=sizes["vision_hidden"],
        num_attention_heads=sizes["vision_heads"],
        intermediate_size=sizes["vision_intermediate"],
        num_hidden_layers=sizes["vision_layers"],
    )

    llm = config["llm_config"]
    old_head_dim = llm.get("head_dim") or llm["hidden_size"] // llm["num_attention_heads"]
    grouped = llm.get("num_key_value_heads", llm["num_attention_heads"]) < llm["num_attention_heads"]
    kv_heads = sizes["llm_kv_heads"] if grouped else sizes["llm_heads"]
    if sizes["llm_heads"] % kv_heads:
        raise ValueError(f"--llm-heads {sizes['llm_heads']} is not divisible by --llm-kv-heads {kv_heads}")
    head_dim = sizes["llm_hidden"] // sizes["llm_heads"]
    llm.update(
        hidden_size=sizes["llm_hidden"],
        intermediate_size=sizes["llm_intermediate"],
        num_attention_heads=sizes["llm_heads"],
        num_key_value_heads=kv_heads,
        num_hidden_layers=sizes["llm_layers"],
        vocab_size=max(llm["vocab_size"], vocab_size),
    )
    if "head_dim" in llm:
        llm["head_dim"] = head_dim
    rope_scaling = llm.get("rope_scaling")
    if isinstance(rope_scaling, dict):
        rotary = llm.get("partial_rotary_factor", 1.0)
        for key in ("short_factor", "long_factor"):
            values = rope_scaling.get(key)
            if isinstance(values, list) and len(values) == int(old_head_dim * rotary) // 2:
                rope_scaling[key] = _resample(values, int(head_dim * rotary) // 2)
    return config


class _Init:
    """Random tensors whose scale makes every parameter matter in a forward pass."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def _normal(self, shape, mean, std):
        return (mean + std * self.rng.standard_normal(shape)).astype(np.float32)

    def matrix(self, *shape):
        return self._normal(shape, 0.0, 0.02)

    def bias(self, n):
        return self._normal((n,), 0.0, 0.02)

    def norm(self, n):
        return self._normal((n,), 1.0, 0.1)

    def embedding(self, *shape):
        return self._normal(shape, 0.0, 0.1)

    def layer_scale(self, n):
        return self.rng.uniform(0.1, 1.0, n).astype(np.float32)


def vision_weights(vc, init):
    """InternViT weights under ``vision_model.`` (names of the original modeling_intern_vit.py)."""
    c, p, grid = vc["hidden_size"], vc["patch_size"], vc["image_size"] // vc["patch_size"]
    pre = "vision_model.embeddings."
    yield pre + "class_embedding", init.embedding(1, 1, c)
    yield pre + "patch_embedding.weight", init.matrix(c, vc.get("num_channels", 3), p, p)
    yield pre + "patch_embedding.bias", init.bias(c)
    yield pre + "position_embedding", init.embedding(1, 1 + grid * grid, c)
    layer_norm = vc.get("norm_type", "rms_norm") == "layer_norm"
    for i in range(vc["num_hidden_layers"]):
        pre = f"vision_model.encoder.layers.{i}."
        yield pre + "attn.qkv.weight", init.matrix(3 * c, c)
        if vc.get("qkv_bias", False):
            yield pre + "attn.qkv.bias", init.bias(3 * c)
        if vc.get("qk_normalization", False):
            yield pre + "attn.q_norm.weight", init.norm(c)
            yield pre + "attn.k_norm.weight", init.norm(c)
        yield pre + "attn.proj.weight", init.matrix(c, c)
        yield pre + "attn.proj.bias", init.bias(c)
        yield pre + "mlp.fc1.weight", init.matrix(vc["intermediate_size"], c)
        yield pre + "mlp.fc1.bias", init.bias(vc["intermediate_size"])
        yield pre + "mlp.fc2.weight", init.matrix(c, vc["intermediate_size"])
        yield pre + "mlp.fc2.bias", init.bias(c)
        for norm in ("norm1", "norm2"):
            yield pre + f"{norm}.weight", init.norm(c)
            if layer_norm:
                yield pre + f"{norm}.bias", init.bias(c)
        yield pre + "ls1", init.layer_scale(c)
        yield pre + "ls2", init.layer_scale(c)


def projector_weights(config, init):
    """``mlp1``: LayerNorm, Linear, GELU, Linear over pixel-shuffled vision features."""
    width = config["vision_config"]["hidden_size"] * int(1 / config["downsample_ratio"]) ** 2
    hidden = config["llm_config"]["hidden_size"]
    yield "mlp1.0.weight", init.norm(width)
    yield "mlp1.0.bias", init.bias(width)
    yield "mlp1.1.weight", init.matrix(hidden, width)
    yield "mlp1.1.bias", init.bias(hidden)
    yield "mlp1.3.weight", init.matrix(hidden, hidden)
    yield "mlp1.3.bias", init.bias(hidden)


def _llm_dims(lc):
    heads, kv = lc["num_attention_heads"], lc["num_key_value_heads"]
    head_dim = lc.get("head_dim") or lc["hidden_size"] // heads
    return lc["hidden_size"], lc["intermediate_size"], heads * head_dim, kv * head_dim


def _llama_like_layer(lc, init, pre, qkv_bias, o_bias, mlp_bias):
    h, inter, q_out, kv_out = _llm_dims(lc)
    for name, out in (("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)):
        yield pre + f"self_attn.{name}.weight", init.matrix(out, h)
        if qkv_bias:
            yield pre + f"self_attn.{name}.bias", init.bias(out)
    yield pre + "self_attn.o_proj.weight", init.matrix(h, q_out)
    if o_bias:
        yield pre + "self_attn.o_proj.bias", init.bias(h)
    for name, shape in (("gate_proj", (inter, h)), ("up_proj", (inter, h)), ("down_proj", (h, inter))):
        yield pre + f"mlp.{name}.weight", init.matrix(*shape)
        if mlp_bias:
            yield pre + f"mlp.{name}.bias", init.bias(shape[0])


def _phi3_layer(lc, init, pre):
    h, inter, q_out, kv_out = _llm_dims(lc)
    yield pre + "self_attn.qkv_proj.weight", init.matrix(q_out + 2 * kv_out, h)
    yield pre + "self_attn.o_proj.weight", init.matrix(h, q_out)
    yield pre + "mlp.gate_up_proj.weight", init.matrix(2 * inter, h)
    yield pre + "mlp.down_proj.weight", init.matrix(h, inter)


def _internlm2_layer(lc, init, pre):
    h, inter, q_out, kv_out = _llm_dims(lc)
    bias = lc.get("bias", False)
    # wqkv rows are grouped per KV head: its query heads, then its key head, then its value head.
    yield pre + "attention.wqkv.weight", init.matrix(q_out + 2 * kv_out, h)
    if bias:
        yield pre + "attention.wqkv.bias", init.bias(q_out + 2 * kv_out)
    yield pre + "attention.wo.weight", init.matrix(h, q_out)
    if bias:
        yield pre + "attention.wo.bias", init.bias(h)
    yield pre + "feed_forward.w1.weight", init.matrix(inter, h)
    yield pre + "feed_forward.w3.weight", init.matrix(inter, h)
    yield pre + "feed_forward.w2.weight", init.matrix(h, inter)
    yield pre + "attention_norm.weight", init.norm(h)
    yield pre + "ffn_norm.weight", init.norm(h)


def llm_weights(lc, init):
    """Language model weights under ``language_model.``, named as in the original LLM code."""
    arch = lc["architectures"][0]
    h, vocab = lc["hidden_size"], lc["vocab_size"]
    tied = lc.get("tie_word_embeddings", False)
    if arch == "InternLM2ForCausalLM":
        yield "language_model.model.tok_embeddings.weight", init.matrix(vocab, h)
        for i in range(lc["num_hidden_layers"]):
            yield from _internlm2_layer(lc, init, f"language_model.model.layers.{i}.")
        yield "language_model.model.norm.weight", init.norm(h)
        if not tied:
            yield "language_model.output.weight", init.matrix(vocab, h)
        return
    if arch not in ("Qwen2ForCausalLM", "LlamaForCausalLM", "Phi3ForCausalLM"):
        raise ValueError(f"unsupported llm architecture {arch!r}")
    yield "language_model.model.embed_tokens.weight", init.matrix(vocab, h)
    for i in range(lc["num_hidden_layers"]):
        pre = f"language_model.model.layers.{i}."
        if arch == "Phi3ForCausalLM":
            yield from _phi3_layer(lc, init, pre)
        elif arch == "Qwen2ForCausalLM":
            yield from _llama_like_layer(lc, init, pre, True, False, False)
        else:
            bias = lc.get("attention_bias", False)
            yield from _llama_like_layer(lc, init, pre, bias, bias, lc.get("mlp_bias", False))
        yield pre + "input_layernorm.weight", init.norm(h)
        yield pre + "post_attention_layernorm.weight", init.norm(h)
    yield "language_model.model.norm.weight", init.norm(h)
    if not tied:  # tied checkpoints saved by transformers omit the shared lm_head
        yield "language_model.lm_head.weight", init.matrix(vocab, h)


def tiny_weights(config, seed=0):
    """All (name, float32 array) pairs of a checkpoint for ``config``, generated lazily."""
    init = _Init(seed)
    yield from vision_weights(config["vision_config"], init)
    yield from projector_weights(config, init)
    yield from llm_weights(config["llm_config"], init)


def _copy_side_files(tokenizer_dir, config_dir, out_dir):
    for name in sorted(os.listdir(tokenizer_dir)):
        src = os.path.join(tokenizer_dir, name)
        if name != "config.json" and os.path.isfile(src):
            shutil.copyfile(src, os.path.join(out_dir, name))
    for name in SIDE_FILES:
        src, dst = os.path.join(config_dir, name), os.path.join(out_dir, name)
        if os.path.isfile(src) and not os.path.exists(dst):
            shutil.copyfile(src, dst)


def make_tiny_checkpoint(
    config_path, tokenizer_dir, out_dir, seed=0, dtype="float32", shard_bytes=5 * 2**30, vocab_to_cover=None, **sizes
):
    """Write config, tokenizer files and random weights to ``out_dir``; returns the written config.

    The vocabulary grows to cover the tokenizer's ids, or ``vocab_to_cover`` when given (a shape
    measurement whose tokenizer belongs to another model).
    """
    unknown = set(sizes) - set(DEFAULT_SIZES)
    if unknown:
        raise TypeError(f"unknown size argument(s): {sorted(unknown)}")
    sizes = {**DEFAULT_SIZES, **sizes}
    with open(config_path, encoding="utf-8") as f:
        real = json.load(f)
    config = shrink_config(real, vocab_to_cover or tokenizer_size(tokenizer_dir), sizes)
    if config["llm_config"]["vocab_size"] != real["llm_config"]["vocab_size"]:
        logger.info("vocab_size raised to %d to cover the tokenizer", config["llm_config"]["vocab_size"])

    os.makedirs(out_dir, exist_ok=True)
    _copy_side_files(tokenizer_dir, os.path.dirname(os.path.abspath(config_path)), out_dir)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    logger.info(
        "writing %s weights (%s, seed %d) to %s",
        config["llm_config"]["architectures"][0],
        dtype,
        seed,
        out_dir,
    )
    save_checkpoint(out_dir, tiny_weights(config, seed), dtype=dtype, max_shard_bytes=shard_bytes)
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="real InternVLChatConfig config.json")
    parser.add_argument("--tokenizer", required=True, help="folder with the real tokenizer files")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--shard-bytes", type=int, default=5 * 2**30, help="max bytes per safetensors shard")
    for name, default in DEFAULT_SIZES.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    make_tiny_checkpoint(
        args.pop("config"),
        args.pop("tokenizer"),
        args.pop("out"),
        seed=args.pop("seed"),
        dtype=args.pop("dtype"),
        shard_bytes=args.pop("shard_bytes"),
        **args,
    )


if __name__ == "__main__":
    main()
