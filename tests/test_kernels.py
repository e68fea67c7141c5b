"""The fused-kernel dispatch (kernels.py) and weight-only int8 (quant.py).

There is no GPU here, so the fused path is forced on CPU: Paddle has CPU kernels for fused RMSNorm
and SDPA, which then really run and must give the plain path's numbers; fused RoPE and the int8
GEMM have none and are stood in for by recorders that check how they are called. Paddle's fused
RMSNorm CPU kernel is AVX-512 code: on a CPU without AVX-512 a documented stand-in takes its place
(test_portability.py checks the kernel itself where it can run).
"""
import numpy as np
import paddle
import paddle.incubate.nn.functional as IF
import paddle.nn.functional as F
import pytest

from conftest import random_pixels
from paddlemix.models.internvl2 import InternVLChatModel, kernels, quant
from paddlemix.models.internvl2.llm import KVCache

def _boom(*args, **kwargs):
    raise AssertionError("a fused kernel ran on CPU")


def _reference_rope(q, k, v, sin, cos, use_neox_rotary_style):
    """Paddle's fused RoPE as documented: sin/cos [1, T, 1, D]; False = rotate the two halves."""
    assert use_neox_rotary_style is False and k is None and v is None
    assert sin.shape[0] == 1 and sin.shape[2] == 1 and sin.shape[1] == q.shape[1]
    return [q * cos + kernels.rotate_half(q) * sin, None, None]


def _reference_rms_norm(x, norm_weight, norm_bias, epsilon, begin_norm_axis):
    """Paddle's fused RMSNorm as documented, over the last axis and without bias or quantisation."""
    assert norm_bias is None and begin_norm_axis == x.ndim - 1
    return [norm_weight * x * paddle.rsqrt(x.pow(2).mean(axis=-1, keepdim=True) + epsilon), None]


HAS_AVX512 = paddle.base.core.supports_avx512f()


def _all_plain(monkeypatch):
    monkeypatch.setattr(kernels, "ENABLED", False)
    monkeypatch.setattr(kernels, "fused_enabled", lambda tensor: False)


@pytest.fixture
def forced_fused(monkeypatch):
    """Take the fused path on CPU and count the calls of each fused kernel."""
    calls = {"rms_norm": 0, "rope": 0, "sdpa": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(kernels, "fused_enabled", lambda tensor: True)
    monkeypatch.setattr(kernels, "_native_for", lambda tensor: None)  # as on a GPU: no C++ CPU kernels
    monkeypatch.setattr(IF, "fused_rms_norm", counted("rms_norm", IF.fused_rms_norm if HAS_AVX512
                                                      else _reference_rms_norm))
    monkeypatch.setattr(IF, "fused_rotary_position_embedding", counted("rope", _reference_rope))
    monkeypatch.setattr(F, "scaled_dot_product_attention", counted("sdpa", F.scaled_dot_product_attention))
    return calls


def _image_inputs(model, tokenizer, tiles=1, seed=0):
    """Pixels and ids of a prompt with one image; sets the model's image-token id from the tokenizer."""
    start, end, context = tokenizer.convert_tokens_to_ids(["<img>", "</img>", "<IMG_CONTEXT>"])
    model.img_context_token_id = context
    rng = np.random.RandomState(seed)
    ids = np.concatenate([rng.randint(0, 151000, 5), [start], np.full(tiles * model.num_image_token, context),
                          [end], rng.randint(0, 151000, 7)])
    return random_pixels(tiles, seed), paddle.to_tensor(ids[None].astype(np.int64))


def _logits(model, pixels, ids, attention_mask=None):
    with paddle.no_grad():
        return model(pixels, ids, attention_mask=attention_mask)["logits"].numpy()


def test_cpu_runs_fused_rms_norm_and_plain_attention_and_rope(model, tokenizer, monkeypatch):
    calls = []
    fused_rms_norm = IF.fused_rms_norm
    monkeypatch.setattr(IF, "fused_rms_norm", lambda *args, **kwargs: calls.append(1) or fused_rms_norm(*args, **kwargs))
    for module, name in [(IF, "fused_rotary_position_embedding"), (F, "scaled_dot_product_attention"),
                         (paddle.nn.quant, "weight_only_linear")]:
        monkeypatch.setattr(module, name, _boom)
    assert not kernels.fused_enabled(paddle.ones([1]))
    with kernels.only_fast_paths(*(set(kernels.FAST_PATHS) - {"native"})):  # our C++ RMSNorm would run first
        answer = model.chat(tokenizer, random_pixels(1, 0), "<image>\nHi", dict(max_new_tokens=4, do_sample=False))
    assert isinstance(answer, str) and bool(calls) == HAS_AVX512  # an AVX-512 kernel: never elsewhere


def test_the_fused_path_gives_the_plain_logits_and_tokens(model, tokenizer, forced_fused):
    pixels, ids = _image_inputs(model, tokenizer)
    with pytest.MonkeyPatch.context() as plain:
        _all_plain(plain)
        expected = _logits(model, pixels, ids)
        expected_tokens = model.generate(pixel_values=pixels, input_ids=ids, max_new_tokens=6, do_sample=False,
                                         eos_token_id=None).numpy()
    assert forced_fused == {"rms_norm": 0, "rope": 0, "sdpa": 0}
    fused = _logits(model, pixels, ids)
    assert np.abs(fused - expected).max() <= 1e-5
    llm_layers = model.config.llm.num_hidden_layers
    vit_layers = model.config.vision.num_hidden_layers
    assert forced_fused["sdpa"] == vit_layers + llm_layers  # every ViT layer and the causal prefill
    assert forced_fused["rope"] == llm_layers
    assert forced_fused["rms_norm"] == 2 * llm_layers + 1
    tokens = model.generate(pixel_values=pixels, input_ids=ids, max_new_tokens=6, do_sample=False,
                            eos_token_id=None).numpy()
    np.testing.assert_array_equal(tokens, expected_tokens)


def test_padding_cached_keys_and_batches_keep_the_masked_plain_attention(model, forced_fused):
    lm = model.language_model
    ids = paddle.to_tensor(np.random.RandomState(3).randint(0, 151000, size=(2, 6)))
    padded = paddle.to_tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype="int64")
    assert lm._needs_mask(padded, 0, 6)
    assert not lm._needs_mask(paddle.ones([2, 6], "int64"), 0, 6)
    assert not lm._needs_mask(paddle.ones([2, 7], "int64"), 6, 1)  # one token sees every cached key
    assert lm._needs_mask(paddle.ones([2, 9], "int64"), 6, 3)  # several new tokens after cached ones
    assert lm._needs_mask(paddle.concat([padded, paddle.ones([2, 1], "int64")], axis=1), 6, 1)
    with paddle.no_grad():
        embeds = lm.embed_tokens(ids)
        with pytest.MonkeyPatch.context() as plain:
            _all_plain(plain)
            expected = lm(embeds, padded).numpy()
        cache = KVCache(lm.config, 2, 8, "float32")
        got = lm(embeds, padded, cache=cache).numpy()
        lm(embeds[:, :1], paddle.concat([padded, paddle.ones([2, 1], "int64")], axis=1), cache=cache)
    assert np.abs(got - expected).max() <= 1e-5
    assert forced_fused["sdpa"] == 0  # padded prefill and decoding use the mask
    assert forced_fused["rope"] == 0  # a batch of 2 has per-row positions


def test_int8_values_and_scales_are_those_of_paddles_gpu_quantizer():
    weight = np.random.RandomState(0).standard_normal((128, 256)).astype(np.float16)
    values, scale = quant.quantize_int8(paddle.to_tensor(weight.astype(np.float32)))
    # Paddle's quantizer runs on CPU for fp16; it returns the GPU kernel's layout: columns
    # interleaved and every value stored with a +128 bias, so compare scales and the value sets.
    gpu_values, gpu_scale = paddle.nn.quant.weight_quantize(paddle.to_tensor(weight), algo="weight_only_int8",
                                                            arch=80)
    np.testing.assert_allclose(gpu_scale.astype("float32").numpy(), scale.numpy(), rtol=1e-3)
    unbiased = np.sort((gpu_values.numpy().view(np.uint8) ^ 0x80).view(np.int8).ravel().astype(int))
    ours = np.sort(values.numpy().ravel().astype(int))
    assert np.abs(unbiased - ours).max() <= 1  # fp16 vs fp32 rounding of w / scale
    assert (unbiased != ours).mean() < 0.01


def test_int8_linear_is_the_matmul_with_the_dequantised_weight():
    paddle.seed(0)
    linear = paddle.nn.Linear(64, 48)
    layer = quant.WeightOnlyInt8Linear(linear)
    x = paddle.randn([3, 5, 64])
    values, scale = layer.weight_int8.numpy().T.astype(np.float64), layer.weight_scale.numpy().astype(np.float64)
    assert layer.weight_int8.dtype == paddle.int8 and np.abs(values).max() <= 127
    assert layer.weight_int8.shape == [48, 64]  # on CPU: [out, in], for this project's int8 kernel
    expected = x.numpy().astype(np.float64) @ (values * scale) + linear.bias.numpy()
    np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-5, rtol=1e-5)
    # int8 keeps the weight to half a step of its column's scale
    assert np.abs(values * scale - linear.weight.numpy()).max() <= scale.max() / 2 + 1e-7


def test_quantized_model_chats_close_to_the_float_model(tiny_1b, model, tokenizer):
    quantized = InternVLChatModel.from_pretrained(tiny_1b, quant="weight_only_int8")
    linears = [layer for layer in quantized.language_model.layers.sublayers() if isinstance(layer, paddle.nn.Linear)]
    int8 = [layer for layer in quantized.language_model.layers.sublayers()
            if isinstance(layer, quant.WeightOnlyInt8Linear)]
    assert not linears and len(int8) == 4 * quantized.config.llm.num_hidden_layers
    assert isinstance(quantized.language_model.lm_head, paddle.nn.Linear)  # the head stays in float
    pixels, ids = _image_inputs(model, tokenizer)
    _image_inputs(quantized, tokenizer)
    expected, got = _logits(model, pixels, ids), _logits(quantized, pixels, ids)
    assert np.abs(got - expected).max() <= 0.05 * np.abs(expected).max()
    assert isinstance(quantized.chat(tokenizer, pixels, "<image>\nHi", dict(max_new_tokens=3, do_sample=False)), str)


def test_quantization_is_validated(tiny_1b, model, monkeypatch):
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        InternVLChatModel.from_pretrained(tiny_1b, quant="int4")
    monkeypatch.setattr(quant, "fused_enabled", lambda tensor: True)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        quant.quantize_language_model(model.language_model, "weight_only_int8")


def test_on_gpu_the_int8_layer_calls_paddles_kernel(monkeypatch):
    calls = []

    def fake_quantize(weight, algo, arch):
        calls.append(("quantize", algo, arch))
        return quant.quantize_int8(weight)

    def fake_linear(x, weight, bias, weight_scale, weight_dtype, arch):
        calls.append(("linear", weight_dtype, arch))
        return paddle.matmul(x, weight.astype(x.dtype)) * weight_scale + bias

    monkeypatch.setattr(quant, "fused_enabled", lambda tensor: True)
    monkeypatch.setattr(quant, "gpu_arch", lambda: 86)
    monkeypatch.setattr(paddle.nn.quant, "weight_quantize", fake_quantize)
    monkeypatch.setattr(paddle.nn.quant, "weight_only_linear", fake_linear)
    layer = quant.WeightOnlyInt8Linear(paddle.nn.Linear(16, 8))
    layer(paddle.randn([2, 16]))
    assert calls == [("quantize", "weight_only_int8", 86), ("linear", "int8", 86)]


def test_the_cpu_linear_and_swiglu_give_the_plain_numbers(monkeypatch):
    paddle.seed(1)
    layer = kernels.Linear(96, 80)
    x = paddle.randn([2, 40, 96])  # 80 rows: the addmm path
    expected = x.numpy().astype(np.float64) @ layer.weight.numpy() + layer.bias.numpy()
    np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-5, rtol=1e-5)
    gate_up = paddle.randn([2, 5, 64])
    fused = kernels.swiglu(gate_up).numpy()
    with pytest.MonkeyPatch.context() as plain:
        _all_plain(plain)
        np.testing.assert_allclose(kernels.swiglu(gate_up).numpy(), fused, atol=1e-6)
        np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-5, rtol=1e-5)
