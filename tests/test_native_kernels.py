"""This project's C++ CPU kernels (csrc/cpu_kernels.cc) against the plain Paddle ops, on every body the CPU has.

The AVX-512 body runs where the CPU has AVX-512; elsewhere its cases run in a second process on a
test build whose AVX-512 intrinsics are SIMDe's portable versions (csrc/emulated_avx512.h), so the
body's own code is checked on every x86 CPU. The AVX2 body runs on any AVX2 CPU, AVX-512 ones
included, and test_portability runs the automatic choice on an emulated Haswell, where an AVX-512
instruction would kill the process.
"""
import logging
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest

from paddlemix.models.internvl2 import kernels, native

ROWS = (1, 7, 16, 17, 1025)
SHAPES = ((64, 33), (901, 151), (128, 16), (2053, 19))  # (K, N): odd sizes, tails, K over 2 input blocks
BODIES = [name for name, _, _ in kernels.NATIVE_BODIES]
CODES = {name: code for name, code, _ in kernels.NATIVE_BODIES}


def _body_or_skip(name):
    feature = {body: need for body, _, need in kernels.NATIVE_BODIES}[name]
    if feature is not None and not kernels.CPU_FEATURE_QUERIES[feature]():
        pytest.skip(f"this CPU lacks {feature}, which the {name} body needs")


# Set by test_without_mkl_the_decoding_step_multiplies_with_its_own_loops for the process it starts.
WITHOUT_MKL = os.environ.get("PADDLEMIX_TEST_WITHOUT_MKL") == "1"
# Set by test_the_avx512_body_passes_its_cases_emulated_where_the_cpu_lacks_avx512 for the process it
# starts: the kernels are the emulation build, whose AVX-512 body runs on this CPU.
EMULATED_AVX512 = os.environ.get("PADDLEMIX_TEST_EMULATED_AVX512") == "1"
if EMULATED_AVX512:
    native.TEST_CFLAGS = ["-DPADDLEMIX_EMULATED_AVX512", "-mavx2", "-mfma"]
    kernels.NATIVE_BODIES = tuple((name, code, None if name == "avx512" else need)
                                  for name, code, need in kernels.NATIVE_BODIES)
SIMDE_HEADER = "/usr/include/simde/x86/avx512.h"  # Debian's libsimde-dev (`make simde`)


@pytest.fixture(scope="module")
def ops():
    if WITHOUT_MKL:  # as on a wheel without MKL (aarch64): the small products' own loops
        native._mkl_flags = lambda: ([], [])
    module = native.ops()
    assert module is not None, "the C++ kernels did not build; see the warning above"
    assert not (WITHOUT_MKL and hasattr(module, "paddlemix_prefill_attention")), "MKL was linked after all"
    return module


def _record_calls(monkeypatch, ops, *names):
    """A list that gets (op name, body code) for each call of the named ops."""
    calls = []
    for name in names:
        original = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *args, _n=name, _o=original: calls.append((_n, args[-1])) or _o(*args))
    return calls


def _bf16(array):
    """(bf16 paddle tensor, the same values in float64)."""
    tensor = paddle.to_tensor(array.astype(np.float32)).astype("bfloat16")
    return tensor, tensor.astype("float32").numpy().astype(np.float64)


def _close(got, want):
    scale = max(np.abs(want).max(), 1e-6)
    assert np.abs(got - want).max() / scale <= 1e-5, np.abs(got - want).max() / scale


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("k,n", SHAPES)
def test_bf16_product_equals_the_widened_weights_product(ops, body, rows, k, n):
    _body_or_skip(body)
    rng = np.random.RandomState(rows * 1000 + k + n)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    weight, weight64 = _bf16(rng.standard_normal((n, k)))
    code = CODES[body]
    bias = rng.standard_normal(n).astype(np.float32)
    got = ops.paddlemix_bf16_linear(paddle.to_tensor(x), weight, paddle.zeros([0]), code)
    assert got.dtype == paddle.float32 and got.shape == [rows, n]
    _close(got.numpy(), x.astype(np.float64) @ weight64.T)
    got = ops.paddlemix_bf16_linear(paddle.to_tensor(x), weight, paddle.to_tensor(bias), code)
    _close(got.numpy(), x.astype(np.float64) @ weight64.T + bias)


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("n", (1, 3, 7, 9, 1153))
@pytest.mark.parametrize("k", (17, 896))
def test_one_row_product_covers_every_output_however_few_each_thread_gets(ops, body, n, k):
    """Decoding's product splits the outputs between the threads, each share in four runs and a rest:
    shares of none, fewer than four and a few over four rows must all come out whole."""
    _body_or_skip(body)
    rng = np.random.RandomState(n * 7 + k)
    x = rng.standard_normal((1, k)).astype(np.float32)
    weight, weight64 = _bf16(rng.standard_normal((n, k)))
    bias = rng.standard_normal(n).astype(np.float32)
    got = ops.paddlemix_bf16_linear(paddle.to_tensor(x), weight, paddle.to_tensor(bias), CODES[body])
    _close(got.numpy(), x.astype(np.float64) @ weight64.T + bias)
    values = rng.randint(-127, 128, (n, k)).astype(np.int8)
    scale = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    got = ops.paddlemix_int8_linear(paddle.to_tensor(x), paddle.to_tensor(values), paddle.to_tensor(scale),
                                    paddle.to_tensor(bias), CODES[body])
    _close(got.numpy(), (x.astype(np.float64) @ values.T.astype(np.float64)) * scale + bias)


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("k,n", SHAPES)
def test_int8_product_scales_each_output(ops, body, rows, k, n):
    _body_or_skip(body)
    rng = np.random.RandomState(rows + k * n)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    values = rng.randint(-127, 128, (n, k)).astype(np.int8)
    scale = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    code = CODES[body]
    bias = rng.standard_normal(n).astype(np.float32)
    got = ops.paddlemix_int8_linear(paddle.to_tensor(x), paddle.to_tensor(values), paddle.to_tensor(scale),
                                    paddle.to_tensor(bias), code)
    _close(got.numpy(), (x.astype(np.float64) @ values.T.astype(np.float64)) * scale + bias)


def test_lowp_linear_takes_the_kernel_for_few_rows_and_the_plain_ops_otherwise(ops, monkeypatch):
    rng = np.random.RandomState(0)
    weight, weight64 = _bf16(rng.standard_normal((40, 24)))
    calls = []
    original = ops.paddlemix_bf16_linear
    monkeypatch.setattr(ops, "paddlemix_bf16_linear", lambda *args: calls.append(args[-1]) or original(*args))
    for shape in ((1, 1, 24), (2, 8, 24), (3, 17, 24)):  # 1, 16 and 51 rows
        x = rng.standard_normal(shape).astype(np.float32)
        out = kernels.lowp_linear(paddle.to_tensor(x), weight)
        assert out.shape == [*shape[:-1], 40]
        _close(out.numpy(), x.astype(np.float64) @ weight64.T)
    assert calls == [kernels.native_isa()[1]] * 2  # 51 rows is a GEMM (paddlemix_bf16_gemm)
    with kernels.only_fast_paths():
        kernels.lowp_linear(paddle.to_tensor(x[:1, :1]), weight)
    assert len(calls) == 2


@pytest.mark.parametrize("rows", (17, 100, 1025))
@pytest.mark.parametrize("k,n", SHAPES + ((1024, 4096),))
def test_bf16_gemm_equals_the_widened_weights_product(ops, rows, k, n):
    if not hasattr(ops, "paddlemix_bf16_gemm"):
        pytest.skip("this Paddle wheel ships no MKL BLAS, which the bf16 GEMM uses")
    rng = np.random.RandomState(rows + k + n)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    weight, weight64 = _bf16(rng.standard_normal((n, k)))
    got = kernels.lowp_linear(paddle.to_tensor(x), weight)
    _close(got.numpy(), x.astype(np.float64) @ weight64.T)


def test_the_best_body_follows_the_cpu_and_a_forced_body_must_exist(monkeypatch):
    monkeypatch.setitem(kernels.CPU_FEATURE_QUERIES, "avx512f", lambda: False)
    monkeypatch.setitem(kernels.CPU_FEATURE_QUERIES, "avx2+fma", lambda: True)
    assert kernels.native_isa() == ("avx2", 1)
    monkeypatch.setitem(kernels.CPU_FEATURE_QUERIES, "avx2+fma", lambda: False)
    assert kernels.native_isa() == ("plain", 0)
    with kernels.native_body("avx512"), pytest.raises(RuntimeError, match="cannot run the avx512 body"):
        kernels.native_isa()
    with pytest.raises(ValueError, match="unknown body"):
        with kernels.native_body("sse"):
            pass


def test_without_a_compiler_one_warning_and_the_plain_ops(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PADDLEMIX_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_state", {})

    def no_compiler(folder):
        raise OSError("cc: command not found")

    monkeypatch.setattr(native, "_build", no_compiler)
    with caplog.at_level(logging.WARNING, logger="paddlemix"):
        assert native.ops() is None and native.ops() is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cc: command not found" in warnings[0] and "plain Paddle ops" in warnings[0]
    weight, weight64 = _bf16(np.ones((3, 5)))
    np.testing.assert_allclose(kernels.lowp_linear(paddle.ones([1, 5]), weight).numpy(), [[5.0, 5.0, 5.0]])
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_build", lambda folder: pytest.fail("a failed build is retried"))
    assert native.ops() is None  # remembered for this source and Paddle


def test_a_second_process_loads_the_built_library_without_building(ops):
    code = ("import logging, sys; logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)\n"
            "from paddlemix.models.internvl2 import native\n"
            "assert native.ops() is not None\nprint('loaded')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded" in done.stdout and "building the CPU kernels" not in done.stdout + done.stderr
    assert "Compiling" not in done.stdout  # Paddle's own build message never reaches the terminal


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 17), (2, 3, 1025), (16, 64)])
def test_scaled_softmax_equals_paddles(ops, body, shape):
    _body_or_skip(body)
    rng = np.random.RandomState(sum(shape))
    scores = (rng.standard_normal(shape) * 8).astype(np.float32)
    scores[..., :1] = -1e30  # a masked key: exactly zero weight, as in Paddle's softmax
    code = CODES[body]
    got = ops.paddlemix_scaled_softmax(paddle.to_tensor(scores), 0.125, code).numpy()
    want = paddle.nn.functional.softmax(paddle.to_tensor(scores) * 0.125, axis=-1).numpy()
    if shape[-1] > 1:
        assert (got[..., 0] == 0).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(-1), 1, rtol=1e-5)


@pytest.mark.parametrize("body", BODIES)
def test_gelu_is_the_exact_erf_gelu(ops, body):
    _body_or_skip(body)
    rng = np.random.RandomState(3)
    x = np.concatenate([np.linspace(-12, 12, 4097), rng.standard_normal(1001) * 3, [0.0, -0.0, 1e-30, -1e-30]])
    x = x.astype(np.float32)
    code = CODES[body]
    got = ops.paddlemix_gelu(paddle.to_tensor(x), code).numpy()
    want = paddle.nn.functional.gelu(paddle.to_tensor(x), approximate=False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_vit_path_uses_them_for_inference_and_the_plain_ops_for_gradients(ops, monkeypatch):
    calls = []
    monkeypatch.delattr(ops, "paddlemix_attention", raising=False)  # as without MKL: matmul, C++ softmax, matmul
    for name in ("paddlemix_scaled_softmax", "paddlemix_gelu"):
        original = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *args, _n=name, _o=original: calls.append(_n) or _o(*args))
    q, k, v = (paddle.randn([1, 33, 2, 8]) for _ in range(3))
    got = kernels.full_attention(q, k, v)
    with kernels.only_fast_paths():
        want = kernels.full_attention(q, k, v)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    x = paddle.randn([4, 5])
    kernels.gelu(x)
    assert calls == ["paddlemix_scaled_softmax", "paddlemix_gelu"]
    x.stop_gradient = False
    kernels.gelu(x).sum().backward()  # no C++ backward: the plain ops run
    assert calls == ["paddlemix_scaled_softmax", "paddlemix_gelu"] and x.grad is not None


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 64), (2, 17, 3, 64), (1, 1025, 2, 64), (1, 130, 4, 128)])
def test_attention_equals_the_plain_ops(ops, body, shape):
    _body_or_skip(body)
    if not hasattr(ops, "paddlemix_attention"):
        pytest.skip("this Paddle wheel ships no MKL BLAS, which the attention kernel uses")
    rng = np.random.RandomState(shape[1])
    q, k, v = (paddle.to_tensor((rng.standard_normal(shape) * 2).astype(np.float32)) for _ in range(3))
    with kernels.only_fast_paths():
        want = kernels.full_attention(q, k, v).numpy()
    code = CODES[body]
    got = ops.paddlemix_attention(q, k, v, shape[-1] ** -0.5, code).numpy()
    assert got.shape == want.shape
    _close(got, want)


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("batch,heads,kv_heads,dim,past,steps", [
    (1, 14, 2, 64, 0, 1), (2, 4, 4, 128, 16, 1), (3, 6, 2, 64, 1024, 1),  # decoding
    (1, 14, 2, 64, 0, 130), (2, 4, 4, 128, 5, 7), (2, 6, 2, 64, 3, 65)])  # prefill, and chunks after cached keys
@pytest.mark.parametrize("masked", [False, True])
def test_cached_attention_equals_the_plain_ops_and_writes_only_its_cache_positions(
        ops, body, batch, heads, kv_heads, dim, past, steps, masked, monkeypatch):
    _body_or_skip(body)
    name = "paddlemix_prefill_attention" if steps > 1 else "paddlemix_decode_attention"
    if not hasattr(ops, name):
        pytest.skip("this Paddle wheel ships no MKL BLAS, which the prefill attention uses")
    calls = _record_calls(monkeypatch, ops, name)
    rng = np.random.RandomState(past + dim + steps)
    total = past + steps
    mask = None
    if masked:  # causal; row b left-padded by b positions; the last row also sees only a window of 3 keys
        allowed = np.tril(np.ones((steps, total), dtype=bool), k=past)[None, None].repeat(batch, axis=0)
        for b in range(batch):
            allowed[b, ..., :min(b, total - 1)] = False
        window = np.arange(total)[None, :] > (np.arange(steps) + past)[:, None] - 3
        allowed[-1, 0] &= window
        mask = paddle.to_tensor(allowed)
    qkv = paddle.to_tensor(rng.standard_normal((batch, steps, (heads + 2 * kv_heads) * dim)).astype(np.float32))
    angles = rng.uniform(0, 6.3, (batch, steps, dim // 2)).astype(np.float32)
    angles = np.concatenate([angles, angles], axis=-1)
    cos, sin = paddle.to_tensor(np.cos(angles)), paddle.to_tensor(np.sin(angles))
    caches = [rng.standard_normal((batch, kv_heads, total + 3, dim)).astype(np.float32) for _ in range(2)]
    written = list(range(past, total))
    outs = {}
    for kind in ("native", "plain"):
        keys, values = (paddle.to_tensor(c) for c in caches)
        with kernels.native_body(body), kernels.only_fast_paths(*(["native"] if kind == "native" else [])):
            out = kernels.cached_attention(qkv, cos, sin, keys, values, past, heads, kv_heads, mask)
        outs[kind] = out.numpy(), keys.numpy(), values.numpy()
        assert out.shape == [batch, steps, heads * dim]
        for before, after in zip(caches, (keys.numpy(), values.numpy())):
            np.testing.assert_array_equal(np.delete(after, written, axis=2), np.delete(before, written, axis=2))
    assert calls == [(name, CODES[body])]
    for got, want in zip(outs["native"], outs["plain"]):
        _close(got, want)
    np.testing.assert_array_equal(outs["native"][2][:, :, past:total], outs["plain"][2][:, :, past:total])


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("shape", [(1, 896), (7, 17), (2, 3, 1025), (1, 1, 64)])
def test_rms_norm_and_its_residual_form_equal_the_plain_ops(ops, body, shape, monkeypatch):
    _body_or_skip(body)
    calls = _record_calls(monkeypatch, ops, "paddlemix_rms_norm", "paddlemix_add_rms_norm")
    rng = np.random.RandomState(sum(shape))
    x, residual = (paddle.to_tensor(rng.standard_normal(shape).astype(np.float32) * 3) for _ in range(2))
    weight = paddle.to_tensor(rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32))
    results = {}
    for name in ("native", "plain"):
        with paddle.no_grad(), kernels.native_body(body), \
                kernels.only_fast_paths(*(["native"] if name == "native" else [])):
            results[name] = [kernels.rms_norm(x, weight, 1e-6), *kernels.add_rms_norm(x, residual, weight, 1e-5)]
    assert calls == [("paddlemix_rms_norm", CODES[body]), ("paddlemix_add_rms_norm", CODES[body])]
    for got, want in zip(results["native"], results["plain"]):
        assert got.shape == list(shape)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(results["native"][2].numpy(), (x + residual).numpy())


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("shape", [(1, 2), (7, 34), (2, 3, 9728), (1, 1, 130)])
def test_swiglu_equals_paddles(ops, body, shape, monkeypatch):
    _body_or_skip(body)
    calls = _record_calls(monkeypatch, ops, "paddlemix_swiglu")
    rng = np.random.RandomState(sum(shape))
    gate_up = paddle.to_tensor((rng.standard_normal(shape) * 4).astype(np.float32))
    with kernels.native_body(body):
        got = kernels.swiglu(gate_up)
    assert calls == [("paddlemix_swiglu", CODES[body])] and got.shape == [*shape[:-1], shape[-1] // 2]
    gate, up = gate_up.chunk(2, axis=-1)
    np.testing.assert_allclose(got.numpy(), (paddle.nn.functional.silu(gate) * up).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("body", BODIES)
def test_packed_attention_equals_attention_over_its_thirds(ops, body):
    _body_or_skip(body)
    if not hasattr(ops, "paddlemix_packed_attention"):
        pytest.skip("this Paddle wheel ships no MKL BLAS, which the attention kernel uses")
    rng = np.random.RandomState(5)
    qkv = paddle.to_tensor(rng.standard_normal((2, 131, 3 * 4 * 64)).astype(np.float32))
    with kernels.native_body(body):
        got = kernels.packed_attention(qkv, 4)
    with kernels.only_fast_paths():
        want = kernels.packed_attention(qkv, 4)
    assert got.shape == [2, 131, 256]
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("shape", [(1, 7), (3, 1025, 1024), (2, 17, 33)])
def test_scaled_residual_and_its_layer_norm_equal_the_plain_ops(ops, body, shape, monkeypatch):
    _body_or_skip(body)
    calls = _record_calls(monkeypatch, ops, "paddlemix_scaled_add", "paddlemix_scaled_add_layer_norm")
    rng = np.random.RandomState(sum(shape))
    x, branch = (paddle.to_tensor((rng.standard_normal(shape) * 3 + 1).astype(np.float32)) for _ in range(2))
    scale, weight, bias = (paddle.to_tensor(rng.uniform(-1.5, 1.5, shape[-1]).astype(np.float32)) for _ in range(3))
    results = {}
    for name in ("native", "plain"):
        with paddle.no_grad(), kernels.native_body(body), \
                kernels.only_fast_paths(*(["native"] if name == "native" else [])):
            results[name] = [kernels.scaled_add(x, branch, scale),
                             *kernels.scaled_add_layer_norm(x, branch, scale, weight, bias, 1e-6)]
    assert calls == [("paddlemix_scaled_add", CODES[body]), ("paddlemix_scaled_add_layer_norm", CODES[body])]
    for got, want in zip(results["native"], results["plain"]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", (17, 300))
def test_the_gemm_with_gelu_equals_gelu_after_the_gemm(ops, rows):
    if not hasattr(ops, "paddlemix_bf16_gemm_bias_gelu"):
        pytest.skip("this Paddle wheel ships no MKL BLAS, which the bf16 GEMM uses")
    rng = np.random.RandomState(rows)
    x = paddle.to_tensor(rng.standard_normal((rows, 96)).astype(np.float32))
    weight, _ = _bf16(rng.standard_normal((130, 96)) * 0.2)
    bias = paddle.to_tensor(rng.standard_normal(130).astype(np.float32))
    got = kernels.lowp_linear(x, weight, bias=bias, with_gelu=True)
    want = paddle.nn.functional.gelu(kernels.lowp_linear(x, weight, bias=bias), approximate=False)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def _layer_by_ops(x, cos, sin, keys, values, past, heads, kv_heads, mask, norms, projections, eps):
    """A decoder layer's decoding step op by op (the plain path of each op when called under only_fast_paths())."""
    def project(inputs, parts):
        weight, scale, bias = parts
        return kernels.lowp_linear(inputs, weight, scale, bias)

    qkv = project(kernels.rms_norm(x, norms[0], eps), projections[0])
    attended = project(kernels.cached_attention(qkv, cos, sin, keys, values, past, heads, kv_heads, mask),
                       projections[1])
    normed, hidden = kernels.add_rms_norm(attended, x, norms[1], eps)
    return hidden + project(kernels.swiglu(project(normed, projections[2])), projections[3])


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("kind", ["bf16", "int8"])
@pytest.mark.parametrize("batch,masked,biased", [(1, False, True), (3, True, False), (16, False, False)])
def test_decode_layer_equals_the_layer_op_by_op(ops, body, kind, batch, masked, biased, monkeypatch):
    _body_or_skip(body)
    calls = _record_calls(monkeypatch, ops, "paddlemix_decode_layer")
    rng = np.random.RandomState(batch + 7 * masked)
    hidden, heads, kv_heads, dim, inner, past = 48, 6, 2, 8, 70, 11

    def weight(rows, cols):
        if kind == "bf16":
            return _bf16(rng.standard_normal((rows, cols)) * 0.3)[0], None
        values = paddle.to_tensor(rng.randint(-127, 128, (rows, cols)).astype(np.int8))
        return values, paddle.to_tensor(rng.uniform(1e-3, 5e-3, rows).astype(np.float32))

    projections = []
    for rows, cols in [((heads + 2 * kv_heads) * dim, hidden), (hidden, heads * dim), (2 * inner, hidden),
                       (hidden, inner)]:
        bias = paddle.to_tensor(rng.standard_normal(rows).astype(np.float32)) if biased else None
        projections.append((*weight(rows, cols), bias))
    norms = [paddle.to_tensor(rng.uniform(0.5, 1.5, hidden).astype(np.float32)) for _ in range(2)]
    x = paddle.to_tensor(rng.standard_normal((batch, 1, hidden)).astype(np.float32))
    angles = np.repeat(rng.uniform(0, 6.3, (batch, 1, dim // 2)), 2, axis=-1).astype(np.float32)
    cos, sin = paddle.to_tensor(np.cos(angles)), paddle.to_tensor(np.sin(angles))
    mask = None
    if masked:
        allowed = np.ones((batch, 1, 1, past + 1), dtype=bool)
        allowed[1:, ..., :2] = False
        mask = paddle.to_tensor(allowed)
    caches = [rng.standard_normal((batch, kv_heads, past + 4, dim)).astype(np.float32) for _ in range(2)]
    results = {}
    for name in ("fused", "ops"):
        keys, values = (paddle.to_tensor(c) for c in caches)
        args = (x, cos, sin, keys, values, past, heads, kv_heads, mask, norms, projections, 1e-6)
        with paddle.no_grad(), kernels.native_body(body), \
                kernels.only_fast_paths(*(["native"] if name == "fused" else [])):
            out = kernels.decode_layer(*args) if name == "fused" else _layer_by_ops(*args)
        results[name] = out.numpy(), keys.numpy(), values.numpy()
    assert calls == [("paddlemix_decode_layer", CODES[body])]
    for got, want in zip(results["fused"], results["ops"]):
        _close(got, want)


def test_decode_layer_declines_what_it_cannot_run(ops):
    x = paddle.ones([17, 1, 8])  # more rows than the small-batch product takes
    cache = paddle.zeros([17, 1, 4, 8])
    assert kernels.decode_layer(x, x, x, cache, cache, 1, 1, 1, None, [paddle.ones([8])] * 2, [None] * 4, 1e-6) is None
    with kernels.only_fast_paths():
        assert kernels.decode_layer(x[:1], x, x, cache, cache, 1, 1, 1, None, [paddle.ones([8])] * 2, [None] * 4,
                                    1e-6) is None


def _cases_pass_in_a_new_process(selection, timeout, **env):
    """Run this file's cases matching `selection` (pytest -k) in a new process with `env` added; they
    must all pass. Returns its output, skip reasons included."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", __file__, "-k",
                           selection], capture_output=True, text=True, timeout=timeout, env=dict(os.environ, **env))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
    return done.stdout


@pytest.mark.skipif(WITHOUT_MKL or native._mkl_flags() == ([], []), reason="this Paddle wheel ships no MKL BLAS")
def test_without_mkl_the_decoding_step_multiplies_with_its_own_loops(tmp_path):
    """The decoding attention's small products call MKL's sgemm where the wheel ships it, else plain
    loops (aarch64): a build without MKL, in its own process, passes the same decoding tests."""
    _cases_pass_in_a_new_process("cached_attention or decode_layer", 1200, PADDLEMIX_TEST_WITHOUT_MKL="1",
                                 PADDLEMIX_CACHE=str(tmp_path))


def test_the_avx512_body_passes_its_cases_emulated_where_the_cpu_lacks_avx512():
    """On a CPU without AVX-512 its body is never run natively: every avx512 case of this file runs in
    a second process on the emulation build, none skipped for the missing feature."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the AVX-512 body is x86-64 code")
    if kernels.CPU_FEATURE_QUERIES["avx512f"]():
        pytest.skip("this CPU has AVX-512: the avx512 cases above run the real body")
    if not kernels.CPU_FEATURE_QUERIES["avx2+fma"]():
        pytest.skip("the emulation build runs on AVX2 and FMA, which this CPU lacks")
    if not os.path.isfile(SIMDE_HEADER):
        if os.environ.get("PADDLEMIX_REQUIRE_SIMDE") == "1":
            pytest.fail(f"{SIMDE_HEADER} is missing; `make simde` installs it (Debian's libsimde-dev)")
        pytest.skip(f"{SIMDE_HEADER} is absent (`make simde` installs Debian's libsimde-dev)")
    said = _cases_pass_in_a_new_process("avx512 and not emulated", 1800, PADDLEMIX_TEST_EMULATED_AVX512="1")
    assert "lacks avx512f" not in said, said[-3000:]


def test_a_prefill_over_256_tokens_attends_as_the_plain_ops_on_every_call(ops):
    """A schedule(dynamic) loop in the kernels took libgomp's work sharing inside libiomp5's parallel
    region: prompts over 256 tokens got wrong attention, different from call to call (1 of 20 calls right)."""
    if not hasattr(ops, "paddlemix_prefill_attention"):
        pytest.skip("this Paddle wheel ships no MKL BLAS, which the prefill attention uses")
    rng = np.random.default_rng(0)
    heads, kv_heads, dim, steps = 14, 2, 64, 271
    qkv = paddle.to_tensor(rng.standard_normal((1, steps, (heads + 2 * kv_heads) * dim), dtype=np.float32))
    angles = rng.standard_normal((1, steps, dim)).astype(np.float32)
    cos, sin = paddle.to_tensor(np.cos(angles)), paddle.to_tensor(np.sin(angles))

    def attend():
        caches = [paddle.zeros([1, kv_heads, steps + 3, dim]) for _ in range(2)]
        return kernels.cached_attention(qkv, cos, sin, *caches, 0, heads, kv_heads).numpy()

    with kernels.only_fast_paths():
        want = attend()
    for _ in range(4):
        _close(attend(), want)


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm to list the library's symbols")
def test_the_kernels_take_every_openmp_entry_point_from_the_wheels_runtime(ops):
    """Every GOMP_* function the library calls must be one the wheel's libiomp5 offers: the others come
    from libgomp and break the work sharing inside libiomp5's parallel regions (see the test above)."""
    runtime = native._openmp_link_flags()
    if runtime == ["-fopenmp"]:
        pytest.skip("the wheel ships no libiomp5; the kernels use GCC's OpenMP runtime alone")

    def symbols(path, which):
        listed = subprocess.run(["nm", "-D", which, path], capture_output=True, text=True, check=True).stdout
        return {line.split()[-1].split("@")[0] for line in listed.splitlines() if line.strip()}

    called = {name for name in symbols(native._library_path(native.cache_dir()), "--undefined-only")
              if name.startswith("GOMP_")}
    offered = symbols(os.path.join(runtime[0][len("-L"):], "libiomp5.so"), "--defined-only")
    assert called and called <= offered, sorted(called - offered)
