"""Numerical parity with the transformers (PyTorch) reference on random weights, fp32.

The same HF-layout tiny checkpoint (built from the real InternVL2-1B config with
every structural switch kept) is loaded by our `from_pretrained` and, in the
reference venv, by transformers' Qwen2ForCausalLM / InternVLVisionModel /
InternVLForConditionalGeneration.
"""
import json
import os

import numpy as np
import paddle
import pytest

from paddlemix.models.internvl2 import InternVLChatModel
from paddlemix.models.internvl2.llm import KVCache
from reference import ASSETS_DIR, load_tool, run_reference

make_tiny = load_tool("make_tiny_checkpoint").make_tiny_checkpoint
CONFIG_1B = str(ASSETS_DIR / "tokenizers" / "internvl2-1b" / "config.json")
TOKENIZER_1B = str(ASSETS_DIR / "tokenizers" / "internvl2-1b")
IMG_CONTEXT_1B = 151648
LOGITS_TOL = 1e-4

pytestmark = pytest.mark.skipif(not os.path.isfile(CONFIG_1B), reason=f"real InternVL2-1B config not found at {CONFIG_1B}")


def _variant_config(tmp_path, **vision_overrides):
    """The real 1B config with some vision switches flipped (e.g. the InternViT-6B structure)."""
    with open(CONFIG_1B, encoding="utf-8") as f:
        config = json.load(f)
    config["vision_config"].update(vision_overrides)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="module")
def tiny_1b(tmp_path_factory):
    """Sharded, fp32 tiny checkpoint from the real 1B config and tokenizer."""
    out = tmp_path_factory.mktemp("tiny1b")
    make_tiny(CONFIG_1B, TOKENIZER_1B, str(out), shard_bytes=2_000_000)
    return str(out)


@pytest.fixture(scope="module")
def model_1b(tiny_1b):
    return InternVLChatModel.from_pretrained(tiny_1b, dtype="float32")


def _pixels(tiles, size=448, seed=0):
    return np.random.RandomState(seed).standard_normal((tiles, 3, size, size)).astype(np.float32)


def _max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


VISION_VARIANTS = {
    "300M-layer_norm": {},
    "6B-rms_norm-qk_norm": dict(norm_type="rms_norm", qk_normalization=True, qkv_bias=False),
    "rms_norm-no_qk_norm": dict(norm_type="rms_norm", qk_normalization=False),
    "layer_norm-qk_norm": dict(qk_normalization=True),
}


@pytest.mark.parametrize("variant", sorted(VISION_VARIANTS))
def test_internvit_matches_transformers(variant, tmp_path):
    config_path = _variant_config(tmp_path, **VISION_VARIANTS[variant])
    ckpt = str(tmp_path / "ckpt")
    make_tiny(config_path, TOKENIZER_1B, ckpt, seed=3)
    model = InternVLChatModel.from_pretrained(ckpt)
    pixels = _pixels(2, seed=1)
    ref = run_reference("vision", ckpt, {"pixel_values": pixels})
    with paddle.no_grad():
        last, hidden = model.vision_model(paddle.to_tensor(pixels), output_hidden_states=True)
    assert _max_diff(last.numpy(), ref["last_hidden_state"]) <= LOGITS_TOL
    assert len(hidden) == ref["hidden_states"].shape[0]
    for ours, theirs in zip(hidden, ref["hidden_states"]):
        assert _max_diff(ours.numpy(), theirs) <= LOGITS_TOL


def test_qwen2_logits_and_greedy_match_transformers(model_1b, tiny_1b):
    ids = np.random.RandomState(0).randint(0, 151000, size=(2, 23)).astype(np.int64)
    ref = run_reference("llm", tiny_1b, {"input_ids": ids, "max_new_tokens": np.array(20)})
    lm = model_1b.language_model
    with paddle.no_grad():
        logits = lm(lm.embed_tokens(paddle.to_tensor(ids))).numpy()
    assert _max_diff(logits, ref["logits"]) <= LOGITS_TOL
    ours = model_1b.generate(input_ids=ids, max_new_tokens=20, do_sample=False).numpy()
    np.testing.assert_array_equal(ours, ref["greedy_tokens"])


def test_kv_cache_decoding_equals_full_forward(model_1b):
    lm = model_1b.language_model
    ids = paddle.to_tensor(np.random.RandomState(1).randint(0, 151000, size=(2, 16)))
    with paddle.no_grad():
        embeds = lm.embed_tokens(ids)
        full = lm(embeds).numpy()
        cache = KVCache(lm.config, 2, 16, "float32")
        steps = [lm(embeds[:, :9], paddle.ones([2, 9], "int64"), cache=cache).numpy()]
        for t in range(9, 16):
            steps.append(lm(embeds[:, t:t + 1], paddle.ones([2, t + 1], "int64"), cache=cache).numpy())
    assert _max_diff(np.concatenate(steps, axis=1), full) <= 1e-5


def _image_prompt(tiles, num_image_token, before=5, after=7, seed=0):
    rng = np.random.RandomState(seed)
    ids = np.concatenate([rng.randint(0, 151000, before), [151646], np.full(tiles * num_image_token, IMG_CONTEXT_1B),
                          [151647], rng.randint(0, 151000, after)])
    return ids[None].astype(np.int64)


def test_whole_model_matches_internvl_for_conditional_generation(model_1b, tiny_1b):
    pixels = _pixels(2, seed=2)
    ids = _image_prompt(2, model_1b.num_image_token)
    ref = run_reference("full", tiny_1b, {"input_ids": ids, "pixel_values": pixels, "image_token_id": np.array(IMG_CONTEXT_1B),
                                          "max_new_tokens": np.array(20)})
    model_1b.img_context_token_id = IMG_CONTEXT_1B
    with paddle.no_grad():
        out = model_1b(paddle.to_tensor(pixels), paddle.to_tensor(ids))
    assert _max_diff(out["logits"].numpy(), ref["logits"]) <= LOGITS_TOL
    ours = model_1b.generate(pixel_values=pixels, input_ids=ids, max_new_tokens=20, do_sample=False).numpy()
    np.testing.assert_array_equal(ours, ref["greedy_tokens"])


def test_select_layer_and_pixel_shuffle_v1_follow_the_config(tmp_path):
    """select_layer=-2 and ps_version=v1 change the features the way the reference computes them."""
    with open(CONFIG_1B, encoding="utf-8") as f:
        config = json.load(f)
    config.update(select_layer=-2, ps_version="v1")
    (tmp_path / "config.json").write_text(json.dumps(config))
    ckpt = str(tmp_path / "ckpt")
    make_tiny(str(tmp_path / "config.json"), TOKENIZER_1B, ckpt, seed=4)
    model = InternVLChatModel.from_pretrained(ckpt)
    pixels = _pixels(1, seed=5)
    ref = run_reference("vision", ckpt, {"pixel_values": pixels})
    with paddle.no_grad():
        features = model.extract_feature(paddle.to_tensor(pixels)).numpy()
        expected = _project_reference(model, ref["hidden_states"][-2], transpose_grid=False)
    assert _max_diff(features, expected) <= LOGITS_TOL


def _project_reference(model, hidden, transpose_grid):
    """Pixel shuffle written out with numpy from the official formula, then our mlp1."""
    tokens = hidden[:, 1:]
    n, length, c = tokens.shape
    side = int(length ** 0.5)
    x = tokens.reshape(n, side, side, c)
    x = x.reshape(n, side, side // 2, c * 2).transpose(0, 2, 1, 3)
    x = x.reshape(n, side // 2, side // 2, c * 4)
    if transpose_grid:
        x = x.transpose(0, 2, 1, 3)
    return model.mlp1(paddle.to_tensor(np.ascontiguousarray(x).reshape(n, -1, c * 4))).numpy()


def test_position_table_is_bicubically_resized_for_other_grids(tiny_1b, model_1b):
    """A 224x336 input (16x24 patches instead of 32x32) resizes the position table like the reference."""
    pixels = np.random.RandomState(6).standard_normal((1, 3, 224, 336)).astype(np.float32)
    ref = run_reference("vision", tiny_1b, {"pixel_values": pixels})
    with paddle.no_grad():
        last, _ = model_1b.vision_model(paddle.to_tensor(pixels))
    assert _max_diff(last.numpy(), ref["last_hidden_state"]) <= LOGITS_TOL
