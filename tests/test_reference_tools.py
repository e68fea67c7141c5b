"""Tests of the checkpoint I/O, the tiny-checkpoint generator and the PyTorch reference script.

The reference outputs are checked against small numpy re-implementations of the ORIGINAL
InternVL semantics (grouped InternLM2 wqkv, fused Phi-3 projections, pixel shuffle v2, ...), so
a wrong weight mapping in tools/torch_reference.py cannot go unnoticed.
"""

import json
import math
import os

import numpy as np
import pytest

from paddlemix.models.internvl2.checkpoint import CheckpointError, open_checkpoint, save_checkpoint
from reference import load_tool, require_asset, run_reference

tiny = load_tool("make_tiny_checkpoint")

IMG_CONTEXT_1B = 151648


def _make(tmp_path_factory, name, tokenizer, config_asset=None, edit=None, **kwargs):
    """Tiny checkpoint from real asset folders; ``edit`` changes a copy of the real config.json."""
    tokenizer_dir = require_asset("tokenizers", tokenizer)
    config_path = require_asset("tokenizers", config_asset or tokenizer, "config.json")
    out = tmp_path_factory.mktemp(name)
    if edit is not None:
        edited = out.parent / f"{name}_config.json"
        edited.write_text(json.dumps(edit(json.loads(config_path.read_text()))))
        config_path = edited
    tiny.make_tiny_checkpoint(config_path, tokenizer_dir, out, **kwargs)
    return out


@pytest.fixture(scope="module")
def tiny_1b(tmp_path_factory):
    return _make(tmp_path_factory, "tiny_1b", "internvl2-1b", shard_bytes=20_000_000)


@pytest.fixture(scope="module")
def tiny_1b_bf16(tmp_path_factory):
    return _make(tmp_path_factory, "tiny_1b_bf16", "internvl2-1b", dtype="bfloat16", shard_bytes=10_000_000)


def _internlm2_with_bias(config):
    config["llm_config"]["bias"] = True
    return config


@pytest.fixture(scope="module")
def tiny_internlm2(tmp_path_factory):
    return _make(tmp_path_factory, "tiny_internlm2", "internvl2-2b", edit=_internlm2_with_bias)


def _phi3_config(config):
    """The 1B config with a Phi-3-mini-128k style llm_config (as in InternVL2-4B)."""
    config["template"] = "phi3-chat"
    config["llm_config"] = {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "vocab_size": 32064,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "type": "su",
            "short_factor": np.linspace(1.0, 3.0, 48).tolist(),
            "long_factor": np.linspace(1.0, 60.0, 48).tolist(),
        },
        "sliding_window": 262144,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 32000,
        "pad_token_id": 32000,
    }
    return config


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory):
    return _make(tmp_path_factory, "tiny_phi3", "llama2-spm", config_asset="internvl2-1b", edit=_phi3_config)


def _real_1b_config():
    return json.loads(require_asset("tokenizers", "internvl2-1b", "config.json").read_text())


def _config(ckpt):
    return json.loads((ckpt / "config.json").read_text())


# ---------------------------------------------------------------- numpy versions of the original model


def _layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def numpy_intern_vit(ck, vc, pixels):
    """All hidden states [L+1, N, S, C] of the original InternViT (modeling_intern_vit.py)."""

    def get(name):
        return ck.get("vision_model." + name).astype(np.float64)

    n, channels, height, width = pixels.shape
    p, c, heads, eps = vc["patch_size"], vc["hidden_size"], vc["num_attention_heads"], vc["layer_norm_eps"]
    patches = pixels.reshape(n, channels, height // p, p, width // p, p).transpose(0, 2, 4, 1, 3, 5)
    x = patches.reshape(n, -1, channels * p * p) @ get("embeddings.patch_embedding.weight").reshape(c, -1).T
    x = x + get("embeddings.patch_embedding.bias")
    cls = np.broadcast_to(get("embeddings.class_embedding"), (n, 1, c))
    x = np.concatenate([cls, x], axis=1) + get("embeddings.position_embedding")

    def norm(h, name):
        if vc["norm_type"] == "layer_norm":
            return _layer_norm(h, get(name + ".weight"), get(name + ".bias"), eps)
        return _rms_norm(h, get(name + ".weight"), eps)

    states = [x]
    for i in range(vc["num_hidden_layers"]):
        pre = f"encoder.layers.{i}."
        qkv = norm(x, pre + "norm1") @ get(pre + "attn.qkv.weight").T
        if vc["qkv_bias"]:
            qkv = qkv + get(pre + "attn.qkv.bias")
        q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
        if vc["qk_normalization"]:
            q = _rms_norm(q, get(pre + "attn.q_norm.weight"), eps)
            k = _rms_norm(k, get(pre + "attn.k_norm.weight"), eps)
        q, k, v = (t.reshape(n, -1, heads, c // heads).transpose(0, 2, 1, 3) for t in (q, k, v))
        attn = _softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(c // heads)) @ v
        attn = attn.transpose(0, 2, 1, 3).reshape(n, -1, c) @ get(pre + "attn.proj.weight").T
        attn = attn + get(pre + "attn.proj.bias")
        x = x + attn * get(pre + "ls1")
        h = _gelu(norm(x, pre + "norm2") @ get(pre + "mlp.fc1.weight").T + get(pre + "mlp.fc1.bias"))
        x = x + (h @ get(pre + "mlp.fc2.weight").T + get(pre + "mlp.fc2.bias")) * get(pre + "ls2")
        states.append(x)
    return np.stack(states)


def _rope(lc, length, head_dim):
    """cos, sin [T, head_dim] of the original LLM's rotary embedding for positions 0..T-1."""
    inv_freq = 1.0 / lc.get("rope_theta", 10000.0) ** (np.arange(0, head_dim, 2) / head_dim)
    scale = 1.0
    scaling = lc.get("rope_scaling") or {}
    if scaling.get("type") in ("su", "longrope"):  # Phi-3: short factors below original_max_position_embeddings
        original = lc["original_max_position_embeddings"]
        assert length <= original
        inv_freq = inv_freq / np.asarray(scaling["short_factor"])
        ratio = lc["max_position_embeddings"] / original
        scale = np.sqrt(1 + np.log(ratio) / np.log(original)) if ratio > 1 else 1.0
    else:  # dynamic NTK only changes anything beyond max_position_embeddings
        assert length <= lc["max_position_embeddings"]
    angles = np.arange(length)[:, None] * inv_freq[None]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles) * scale, np.sin(angles) * scale


def _apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def _llm_layer(ck, lc, i, x, cos, sin):
    """One decoder layer of the original Qwen2 / InternLM2 / Phi-3 code on x [T, H]."""
    arch = lc["architectures"][0]
    heads, kv = lc["num_attention_heads"], lc["num_key_value_heads"]
    d, inter, eps, groups = lc["hidden_size"] // heads, lc["intermediate_size"], lc["rms_norm_eps"], heads // kv
    pre = f"language_model.model.layers.{i}."

    def get(name):
        return ck.get(pre + name).astype(np.float64)

    t = x.shape[0]
    if arch == "InternLM2ForCausalLM":
        h = _rms_norm(x, get("attention_norm.weight"), eps)
        qkv = h @ get("attention.wqkv.weight").T + (get("attention.wqkv.bias") if lc.get("bias") else 0)
        qkv = qkv.reshape(t, kv, groups + 2, d)  # einops 'b q (h gs d) -> b q h gs d'
        q, k, v = qkv[:, :, :groups].reshape(t, heads, d), qkv[:, :, groups], qkv[:, :, groups + 1]
        o_name, o_bias = "attention.wo.weight", ("attention.wo.bias" if lc.get("bias") else None)
    else:
        h = _rms_norm(x, get("input_layernorm.weight"), eps)
        if arch == "Phi3ForCausalLM":
            qkv = h @ get("self_attn.qkv_proj.weight").T
            q, k, v = np.split(qkv, [heads * d, (heads + kv) * d], axis=-1)
        else:
            q, k, v = (
                h @ get(f"self_attn.{n}_proj.weight").T + get(f"self_attn.{n}_proj.bias") for n in ("q", "k", "v")
            )
        q, k, v = q.reshape(t, heads, d), k.reshape(t, kv, d), v.reshape(t, kv, d)
        o_name, o_bias = "self_attn.o_proj.weight", None
    q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
    k, v = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d) + np.triu(np.full((t, t), -np.inf), 1)
    attn = np.einsum("hqk,khd->qhd", _softmax(scores), v).reshape(t, heads * d) @ get(o_name).T
    x = x + attn + (get(o_bias) if o_bias else 0)

    if arch == "InternLM2ForCausalLM":
        h = _rms_norm(x, get("ffn_norm.weight"), eps)
        gate, up = h @ get("feed_forward.w1.weight").T, h @ get("feed_forward.w3.weight").T
        down = "feed_forward.w2.weight"
    else:
        h = _rms_norm(x, get("post_attention_layernorm.weight"), eps)
        if arch == "Phi3ForCausalLM":
            gate, up = np.split(h @ get("mlp.gate_up_proj.weight").T, [inter], axis=-1)
        else:
            gate, up = h @ get("mlp.gate_proj.weight").T, h @ get("mlp.up_proj.weight").T
        down = "mlp.down_proj.weight"
    return x + (_silu(gate) * up) @ get(down).T


def _embed_table(ck, lc):
    internlm2 = lc["architectures"][0] == "InternLM2ForCausalLM"
    return ck.get("language_model.model." + ("tok_embeddings" if internlm2 else "embed_tokens") + ".weight")


def numpy_llm(ck, lc, embeds, last_only=False):
    """Logits [T, V] (or [V] of the last position) of the original causal LM for embeddings [T, H]."""
    x = embeds.astype(np.float64)
    cos, sin = _rope(lc, x.shape[0], lc["hidden_size"] // lc["num_attention_heads"])
    for i in range(lc["num_hidden_layers"]):
        x = _llm_layer(ck, lc, i, x, cos, sin)
    x = _rms_norm(x[-1] if last_only else x, ck.get("language_model.model.norm.weight"), lc["rms_norm_eps"])
    head = "output" if lc["architectures"][0] == "InternLM2ForCausalLM" else "lm_head"
    return x @ ck.get(f"language_model.{head}.weight").astype(np.float64).T


def numpy_greedy(ck, lc, embeds, steps):
    table, new = _embed_table(ck, lc), []
    for _ in range(steps):
        new.append(int(numpy_llm(ck, lc, embeds, last_only=True).argmax()))
        embeds = np.concatenate([embeds, table[new[-1]][None]])
    return new


def numpy_image_embeds(ck, config, pixels):
    """Original InternVLChatModel.extract_feature: ViT, drop CLS, pixel shuffle v2, mlp1."""
    vc, r = config["vision_config"], config["downsample_ratio"]
    feats = numpy_intern_vit(ck, vc, pixels)[config["select_layer"]][:, 1:]
    n, s, c = feats.shape
    w = h = int(s**0.5)
    x = feats.reshape(n, w, h, c).reshape(n, w, int(h * r), int(c / r)).transpose(0, 2, 1, 3)
    x = x.reshape(n, int(h * r), int(w * r), int(c / (r * r))).transpose(0, 2, 1, 3)
    x = x.reshape(n, -1, x.shape[-1])
    x = _layer_norm(x, ck.get("mlp1.0.weight"), ck.get("mlp1.0.bias"), 1e-5)
    x = _gelu(x @ ck.get("mlp1.1.weight").T + ck.get("mlp1.1.bias"))
    return x @ ck.get("mlp1.3.weight").T + ck.get("mlp1.3.bias")


def assert_close(actual, expected, tol=1e-4):
    """Max abs error within ``tol`` times the reference's largest magnitude."""
    assert actual.shape == expected.shape
    err, scale = np.abs(actual - expected).max(), np.abs(expected).max()
    assert err <= tol * scale, f"max error {err:.3g} exceeds {tol:g} x scale {scale:.3g}"


# ---------------------------------------------------------------- checkpoint.py


def _small_sharded(tmp_path):
    tensors = {f"t{i}": np.full((4, 4), i, np.float32) for i in range(4)}
    save_checkpoint(tmp_path, tensors, max_shard_bytes=128)  # two tensors per shard
    return tensors


def test_save_and_open_round_trip(tmp_path):
    tensors = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "ids": np.arange(3, dtype=np.int64),
        "flag": np.array([True, False]),
        "half": np.ones(2, np.float16),
        "empty": np.zeros((0, 3), np.float32),
    }
    save_checkpoint(tmp_path, tensors.items())
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    with open_checkpoint(tmp_path) as ck:
        assert ck.keys() == sorted(tensors) and "w" in ck and "nope" not in ck
        assert ck.shape("empty") == (0, 3)
        np.testing.assert_array_equal(ck.get("w"), tensors["w"])
        assert ck.get("ids").dtype == np.int64 and ck.get("flag").dtype == np.bool_
        assert ck.get("half").dtype == np.float32  # float16 stored as given dtype "float32"
        with pytest.raises(CheckpointError, match="'nope' is not in checkpoint"):
            ck.get("nope")


def test_bfloat16_rounds_to_nearest_even(tmp_path):
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x7F7FFFFF, 0x80000000, 0x7F800000], np.uint32)
    values = np.concatenate([bits.view(np.float32), [np.nan]])
    save_checkpoint(tmp_path, {"x": values}, dtype="bfloat16")
    with open_checkpoint(tmp_path) as ck:
        got = ck.get("x")
    expected = np.array([0x3F800000, 0x3F820000, 0x3F810000, 0x7F800000, 0x80000000, 0x7F800000], np.uint32)
    np.testing.assert_array_equal(got[:-1].view(np.uint32), expected)
    assert np.isnan(got[-1])


def test_files_interoperate_with_safetensors_library(tmp_path):
    from safetensors.numpy import load_file, save_file

    a = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    tensors = {"a": a, "b": np.arange(4, dtype=np.int32)}
    save_checkpoint(tmp_path / "ours", tensors, dtype="float16")
    loaded = load_file(str(tmp_path / "ours" / "model.safetensors"))
    np.testing.assert_array_equal(loaded["a"], tensors["a"].astype(np.float16))
    (tmp_path / "theirs").mkdir()
    save_file(tensors, str(tmp_path / "theirs" / "model.safetensors"), metadata={"format": "pt"})
    with open_checkpoint(tmp_path / "theirs") as ck:
        np.testing.assert_array_equal(ck.get("a"), tensors["a"])
        np.testing.assert_array_equal(ck.get("b"), tensors["b"])


def test_save_replaces_previous_layout(tmp_path):
    _small_sharded(tmp_path)
    assert "model.safetensors.index.json" in os.listdir(tmp_path)
    save_checkpoint(tmp_path, {"only": np.ones(2, np.float32)})
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    _small_sharded(tmp_path)
    assert "model.safetensors" not in os.listdir(tmp_path)
    with open_checkpoint(tmp_path) as ck:
        assert ck.keys() == ["t0", "t1", "t2", "t3"]


def test_truncated_shard_names_the_file(tmp_path):
    _small_sharded(tmp_path)
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors' is truncated or corrupt"):
        open_checkpoint(tmp_path)


@pytest.mark.parametrize("content", [b"\x01\x02", b"\xff" * 8 + b"{}", (8).to_bytes(8, "little") + b"not json"])
def test_corrupt_header(tmp_path, content):
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match="model.safetensors' is truncated or corrupt"):
        open_checkpoint(tmp_path)


def _edit_index(tmp_path, edit):
    path = tmp_path / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    edit(index["weight_map"])
    path.write_text(json.dumps(index))


def test_index_missing_entry(tmp_path):
    _small_sharded(tmp_path)
    _edit_index(tmp_path, lambda weight_map: weight_map.pop("t2"))
    with pytest.raises(CheckpointError, match="tensor 't2' of shard 'model-00002-of-00002.safetensors' is missing"):
        open_checkpoint(tmp_path)
    _edit_index(tmp_path, lambda weight_map: weight_map.pop("t3"))
    with pytest.raises(CheckpointError, match="index references no tensor of shard 'model-00002-of-00002"):
        open_checkpoint(tmp_path)


def test_index_names_missing_shard_or_key(tmp_path):
    _small_sharded(tmp_path)
    _edit_index(tmp_path, lambda weight_map: weight_map.update(ghost="model-00001-of-00002.safetensors"))
    with pytest.raises(CheckpointError, match="'ghost'"):
        open_checkpoint(tmp_path)
    os.unlink(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="shard 'model-00002-of-00002.safetensors', which does not exist"):
        open_checkpoint(tmp_path)


def test_missing_or_unsupported_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        open_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="looked for 'model.safetensors' and 'model.safetensors.index.json'"):
        open_checkpoint(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"\.bin checkpoints are not supported"):
        open_checkpoint(tmp_path)


# ---------------------------------------------------------------- make_tiny_checkpoint.py


def _diff_keys(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        return {k for key in set(a) | set(b) for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")}
    return set() if a == b else {prefix[:-1]}


def test_tiny_config_keeps_structure(tiny_1b):
    real, small = _real_1b_config(), _config(tiny_1b)
    shrunk = {f"{side}.{key}" for side in ("vision_config", "llm_config")
              for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")}
    assert _diff_keys(real, small) == shrunk
    assert small["llm_config"]["num_key_value_heads"] == 2 < small["llm_config"]["num_attention_heads"]
    added = json.loads((tiny_1b / "added_tokens.json").read_text())
    assert max(added.values()) < small["llm_config"]["vocab_size"]
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json", "preprocessor_config.json"):
        assert (tiny_1b / name).is_file(), name


def test_tiny_1b_keys_and_shapes(tiny_1b):
    with open_checkpoint(tiny_1b) as ck:
        keys = ck.keys()
        shapes = {k: ck.shape(k) for k in keys}
    vocab = _config(tiny_1b)["llm_config"]["vocab_size"]
    layer = "vision_model.encoder.layers.1."
    assert shapes["vision_model.embeddings.class_embedding"] == (1, 1, 64)
    assert shapes["vision_model.embeddings.patch_embedding.weight"] == (64, 3, 14, 14)
    assert shapes["vision_model.embeddings.position_embedding"] == (1, 1025, 64)
    assert shapes[layer + "attn.qkv.weight"] == (192, 64) and shapes[layer + "attn.qkv.bias"] == (192,)
    assert shapes[layer + "mlp.fc1.weight"] == (128, 64) and shapes[layer + "ls2"] == (64,)
    assert layer + "norm1.bias" in keys and layer + "attn.q_norm.weight" not in keys
    assert shapes["mlp1.0.weight"] == (256,) and shapes["mlp1.1.weight"] == (64, 256)
    assert shapes["mlp1.3.weight"] == (64, 64)
    llm = "language_model.model.layers.1."
    assert shapes[llm + "self_attn.q_proj.weight"] == (64, 64) and shapes[llm + "self_attn.k_proj.bias"] == (32,)
    assert shapes[llm + "mlp.down_proj.weight"] == (64, 128)
    assert shapes["language_model.model.embed_tokens.weight"] == (vocab, 64)
    assert shapes["language_model.lm_head.weight"] == (vocab, 64)
    # ViT embeddings, 2 ViT layers, mlp1, token embeddings, 2 LLM layers, final norm and lm_head
    assert len(keys) == 4 + 2 * 14 + 6 + 1 + 2 * 12 + 2


def test_tiny_sharded_index(tiny_1b):
    index = json.loads((tiny_1b / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((tiny_1b / s).is_file() for s in shards)
    with open_checkpoint(tiny_1b) as ck:
        assert sorted(index["weight_map"]) == ck.keys()
        assert index["metadata"]["total_size"] == sum(4 * int(np.prod(ck.shape(k))) for k in ck.keys())


def test_tiny_bf16_matches_fp32(tiny_1b, tiny_1b_bf16):
    with open_checkpoint(tiny_1b) as full, open_checkpoint(tiny_1b_bf16) as half:
        assert full.keys() == half.keys()
        for name in full.keys():
            a, b = full.get(name), half.get(name)
            assert b.dtype == np.float32 and not (b.view(np.uint32) & 0xFFFF).any(), name
            np.testing.assert_allclose(b, a, rtol=2**-8, atol=0, err_msg=name)


def test_tiny_internlm2_and_phi3_layouts(tiny_internlm2, tiny_phi3):
    with open_checkpoint(tiny_internlm2) as ck:
        pre = "language_model.model.layers.0."
        assert ck.shape(pre + "attention.wqkv.weight") == ((4 + 2 * 2) * 16, 64)
        assert ck.shape(pre + "attention.wqkv.bias") == (128,) and ck.shape(pre + "attention.wo.bias") == (64,)
        assert ck.shape(pre + "feed_forward.w2.weight") == (64, 128)
        assert ck.shape("language_model.output.weight") == (92553, 64)
    assert _config(tiny_internlm2)["llm_config"]["rope_scaling"] == {"factor": 2.0, "type": "dynamic"}
    lc = _config(tiny_phi3)["llm_config"]
    assert lc["num_key_value_heads"] == 4  # MHA stays MHA
    assert len(lc["rope_scaling"]["short_factor"]) == 8 and lc["rope_scaling"]["long_factor"][-1] == 60.0
    with open_checkpoint(tiny_phi3) as ck:
        pre = "language_model.model.layers.0."
        assert ck.shape(pre + "self_attn.qkv_proj.weight") == (192, 64)
        assert ck.shape(pre + "mlp.gate_up_proj.weight") == (256, 64)


# ---------------------------------------------------------------- torch_reference.py


def test_reference_vision_bf16(tiny_1b_bf16):
    pixels = np.random.default_rng(1).standard_normal((2, 3, 448, 448)).astype(np.float32)
    out = run_reference("vision", tiny_1b_bf16, {"pixel_values": pixels})
    with open_checkpoint(tiny_1b_bf16) as ck:
        expected = numpy_intern_vit(ck, _config(tiny_1b_bf16)["vision_config"], pixels.astype(np.float64))
    assert out["hidden_states"].shape == (3, 2, 1025, 64)
    assert_close(out["hidden_states"], expected)
    np.testing.assert_array_equal(out["last_hidden_state"], out["hidden_states"][-1])


def test_reference_llm_qwen2(tiny_1b):
    lc = _config(tiny_1b)["llm_config"]
    ids = np.random.default_rng(2).integers(0, lc["vocab_size"], (2, 7))
    ids[1, :2] = 0  # left padding
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    out = run_reference("llm", tiny_1b, {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                                         "max_new_tokens": 4, "num_beams": 2})
    with open_checkpoint(tiny_1b) as ck:
        table = _embed_table(ck, lc)
        for row, start in ((0, 0), (1, 2)):
            embeds = table[ids[row, start:]]
            assert_close(out["logits"][row, start:], numpy_llm(ck, lc, embeds))
            assert out["greedy_tokens"][row].tolist() == numpy_greedy(ck, lc, embeds, 4)
    assert out["beam_tokens"].shape == (2, 4)


def test_reference_llm_internlm2_and_eos(tiny_internlm2, tmp_path):
    lc = _config(tiny_internlm2)["llm_config"]
    ids = np.random.default_rng(3).integers(0, lc["vocab_size"], (1, 6))
    with open_checkpoint(tiny_internlm2) as ck:
        embeds = _embed_table(ck, lc)[ids[0]]
        expected_logits, greedy = numpy_llm(ck, lc, embeds), numpy_greedy(ck, lc, embeds, 3)
    # The config's eos must not stop generation; an explicit eos_token_id does (generation ends when
    # every row has finished; finished rows of a batch are padded with pad_token_id).
    for name in os.listdir(tiny_internlm2):
        if name != "config.json":
            os.symlink(tiny_internlm2 / name, tmp_path / name)
    config = _config(tiny_internlm2)
    config["llm_config"]["eos_token_id"] = greedy[0]
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = run_reference("llm", tmp_path, {"input_ids": ids, "max_new_tokens": 3, "eos_token_id": greedy[1],
                                          "pad_token_id": 0})
    assert_close(out["logits"][0], expected_logits)
    assert out["greedy_tokens"][0].tolist() == greedy[:2]


def test_reference_llm_phi3(tiny_phi3):
    lc = _config(tiny_phi3)["llm_config"]
    ids = np.random.default_rng(4).integers(0, lc["vocab_size"], (1, 6))
    out = run_reference("llm", tiny_phi3, {"input_ids": ids})
    with open_checkpoint(tiny_phi3) as ck:
        assert_close(out["logits"][0], numpy_llm(ck, lc, _embed_table(ck, lc)[ids[0]]))


def test_reference_full(tiny_1b):
    config = _config(tiny_1b)
    lc = config["llm_config"]
    ids = np.array([[151644, 872, 198, 151646] + [IMG_CONTEXT_1B] * 256 + [151647, 198, 3838, 151645]])
    pixels = np.random.default_rng(5).standard_normal((1, 3, 448, 448)).astype(np.float32)
    out = run_reference("full", tiny_1b, {"input_ids": ids, "pixel_values": pixels,
                                          "image_token_id": IMG_CONTEXT_1B, "max_new_tokens": 3})
    with open_checkpoint(tiny_1b) as ck:
        embeds = _embed_table(ck, lc)[ids[0]].astype(np.float64)
        embeds[ids[0] == IMG_CONTEXT_1B] = numpy_image_embeds(ck, config, pixels.astype(np.float64))[0]
        assert_close(out["logits"][0], numpy_llm(ck, lc, embeds))
        assert out["greedy_tokens"][0].tolist() == numpy_greedy(ck, lc, embeds, 3)


def _intern_vit_6b_switches(config):
    """The 1B config with the InternViT-6B switches: RMSNorm, q/k norm, no qkv bias, select_layer -2."""
    config["select_layer"] = -2
    config["vision_config"].update(norm_type="rms_norm", qk_normalization=True, qkv_bias=False, layer_norm_eps=1e-3)
    return config


def test_reference_full_intern_vit_6b_switches(tmp_path_factory):
    ckpt = _make(tmp_path_factory, "tiny_6b_switches", "internvl2-1b", edit=_intern_vit_6b_switches, vision_layers=3)
    config = _config(ckpt)
    lc = config["llm_config"]
    ids = np.array([[151644, 151646] + [IMG_CONTEXT_1B] * 256 + [151647, 198]])
    pixels = np.random.default_rng(6).standard_normal((1, 3, 448, 448)).astype(np.float32)
    out = run_reference("full", ckpt, {"input_ids": ids, "pixel_values": pixels, "image_token_id": IMG_CONTEXT_1B})
    with open_checkpoint(ckpt) as ck:
        assert "vision_model.encoder.layers.0.attn.q_norm.weight" in ck
        embeds = _embed_table(ck, lc)[ids[0]].astype(np.float64)
        embeds[ids[0] == IMG_CONTEXT_1B] = numpy_image_embeds(ck, config, pixels.astype(np.float64))[0]
        assert_close(out["logits"][0], numpy_llm(ck, lc, embeds))
