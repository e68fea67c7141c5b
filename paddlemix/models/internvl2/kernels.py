"""Fused kernels behind one switch, with the plain Paddle ops as the fallback.

Each function computes the same maths on both paths (tests run both and compare), so the model code
does not care which one ran.
* GPU only: fused RoPE (no CPU kernel) and SDPA (on CPU no faster than the plain ops).
* CPU and GPU: Paddle's fused RMSNorm and SwiGLU (on CPU only when this project's kernels are off;
  Paddle's RMSNorm has no CPU backward and needs AVX-512, see `CPU_KERNEL_NEEDS`).
* CPU only: `Linear` folds the bias into the product (10-18% faster on the ViT and the prefill).
  For float32 inference on CPU this project's C++ kernels (native.py) run: `lowp_linear` (bfloat16
  or int8 weights in their [out, in] layout: a streaming product for up to 16 rows, an MKL GEMM over
  per-thread widened weights beyond), the decoder's attention over the KV cache with its RoPE and
  cache write (`cached_attention`), RMSNorm with or without the residual add, SwiGLU, and for the
  ViT the attention, the layer-scaled residual with its LayerNorm, the softmax and GELU. Their
  AVX-512 or AVX2+FMA body is chosen from the CPU's features.
Other devices (NPUs) take the plain ops. PADDLEMIX_FUSED_KERNELS=0 turns every fused kernel off.
Some of Paddle's CPU kernels need more than the x86-64 baseline and do not check for it (they die
with SIGILL); `CPU_KERNEL_NEEDS` lists them and they run only where the CPU says it has the feature.
Measurements: docs/performance.md; the audit of the CPU kernels: docs/portability.md.
"""
import contextlib
import logging
import math
import os

import paddle
import paddle.incubate.nn.functional as IF
import paddle.nn.functional as F
from paddle import nn

import paddlemix

from . import native

ENABLED = os.environ.get("PADDLEMIX_FUSED_KERNELS", "1") != "0"

logger = logging.getLogger(__name__)

# Every fast path by name, with the devices that take it (the self-check runs them one at a time).
FAST_PATHS = {"rms_norm": ("gpu", "cpu"), "rope": ("gpu",), "sdpa": ("gpu",), "swiglu": ("gpu", "cpu"),
              "addmm": ("cpu",), "native": ("cpu",)}
_switched_off = set()


@contextlib.contextmanager
def only_fast_paths(*names):
    """Within the block, of the fast paths only `names` may run; the others take the plain ops."""
    unknown = set(names) - set(FAST_PATHS)
    if unknown:
        raise ValueError(f"unknown fast path(s) {sorted(unknown)}; known: {', '.join(FAST_PATHS)}")
    saved = set(_switched_off)
    _switched_off.clear()
    _switched_off.update(set(FAST_PATHS) - set(names))
    try:
        yield
    finally:
        _switched_off.clear()
        _switched_off.update(saved)


# Fast paths whose Paddle CPU kernel uses instructions beyond what every x86-64 CPU has. Paddle 3.3
# compiles `fused_rms_norm` with AVX-512 intrinsics and checks nothing at run time, so on an
# AVX2-only CPU (AMD Zen 1-3, Intel client chips since Alder Lake) it kills the process.
CPU_KERNEL_NEEDS = {"rms_norm": "avx512f"}

# Run-time (cpuid) queries; `paddle.is_compiled_with_avx()` says how Paddle was built, not what this CPU has.
# Paddle answers for AVX-512; numpy's dispatcher (it reads cpuid) for AVX2 and FMA.
CPU_FEATURE_QUERIES = {
    "avx512f": lambda: paddle.base.core.supports_avx512f(),
    "avx2+fma": paddlemix.cpu_has_avx2_fma,
}

_logged_choices = set()


def cpu_kernel_runs(name):
    """Whether the CPU kernel of fast path `name` may run on this CPU; says once, at debug level, which path runs."""
    if name not in FAST_PATHS:
        raise ValueError(f"unknown fast path {name!r}; known: {', '.join(FAST_PATHS)}")
    feature = CPU_KERNEL_NEEDS.get(name)
    runs = feature is None or bool(CPU_FEATURE_QUERIES[feature]())
    if (name, runs) not in _logged_choices:
        _logged_choices.add((name, runs))
        logger.debug("CPU kernel of %s: %s", name, "Paddle's fused kernel" if runs else
                     f"the plain ops (this CPU lacks {feature})")
    return runs


def device_takes(path, kind):
    """Whether a device of `kind` ("cpu", "gpu", ...) takes fast path `path` on this machine."""
    return kind in FAST_PATHS[path] and (kind != "cpu" or cpu_kernel_runs(path))


def fused_enabled(tensor):
    """Whether work on `tensor` goes to the fused kernels."""
    return ENABLED and tensor.place.is_gpu_place()


def _on(name):
    return name not in _switched_off


def _cpu_or_gpu(tensor):
    return ENABLED and (tensor.place.is_gpu_place() or tensor.place.is_cpu_place())


def _needs_grad(*tensors):
    return paddle.is_grad_enabled() and any(not tensor.stop_gradient for tensor in tensors)


# Below this many rows a CPU product with bias is matrix-vector work, where `F.linear` is as fast.
_ADDMM_MIN_ROWS = 16


class Linear(nn.Linear):
    """nn.Linear whose CPU forward adds the bias inside the matrix product (`addmm`).

    On CPU Paddle's `linear` runs the product and then a separate bias add; one `addmm` was
    10-18% faster on the ViT's and the prefill's products (docs/performance.md).
    """

    def forward(self, x):
        rows = math.prod(x.shape[:-1])
        if self.bias is None or rows < _ADDMM_MIN_ROWS or not (ENABLED and _on("addmm") and x.place.is_cpu_place()):
            return super().forward(x)
        out = paddle.addmm(self.bias.unsqueeze(0), x.reshape([rows, x.shape[-1]]), self.weight)
        return out.reshape(list(x.shape[:-1]) + [self.weight.shape[1]])


def swiglu(gate_up):
    """silu(gate) * up for [gate | up] packed on the last axis; one kernel on CPU and GPU (2x faster on CPU)."""
    module = _native_for(gate_up)
    if module is not None:
        return module.paddlemix_swiglu(gate_up.contiguous(), native_isa()[1])
    if _on("swiglu") and _cpu_or_gpu(gate_up):
        return F.swiglu(gate_up)
    gate, up = gate_up.chunk(2, axis=-1)
    return F.silu(gate) * up


def rms_norm(x, weight, eps):
    """weight * x / rms(x), the RMS taken in float32 as the reference models do."""
    module = _native_for(x)
    if module is not None and weight.dtype == paddle.float32 and not _needs_grad(weight):
        return module.paddlemix_rms_norm(x.contiguous(), weight, float(eps), native_isa()[1])
    # Paddle has no CPU backward for it: training on CPU takes the plain ops.
    if _on("rms_norm") and (fused_enabled(x) or (_cpu_or_gpu(x) and not _needs_grad(x, weight)
                                                 and cpu_kernel_runs("rms_norm"))):
        return IF.fused_rms_norm(x, weight, None, eps, begin_norm_axis=x.ndim - 1)[0]
    x32 = x.astype("float32")
    x32 = x32 * paddle.rsqrt(x32.pow(2).mean(axis=-1, keepdim=True) + eps)
    return weight * x32.astype(x.dtype)


def add_rms_norm(x, residual, weight, eps):
    """(rms_norm(x + residual), x + residual): a decoder layer's residual add and the next norm, one pass on CPU."""
    module = _native_for(x)
    if (module is not None and residual.dtype == paddle.float32 and weight.dtype == paddle.float32
            and not _needs_grad(residual, weight)):
        out, total = module.paddlemix_add_rms_norm(x.contiguous(), residual.contiguous(), weight, float(eps),
                                                   native_isa()[1])
        return out, total
    total = x + residual
    return rms_norm(total, weight, eps), total


def rotate_half(x):
    first, second = x.chunk(2, axis=-1)
    return paddle.concat([-second, first], axis=-1)


def apply_rotary(x, cos, sin):
    """RoPE on x [B, T, heads, D] with cos/sin [B, T, D] (halves rotated, as in HF).

    The fused kernel takes one cos/sin row set for the whole batch, so it runs for batch 1
    (a chat turn); batches, whose rows have their own positions, take the plain ops.
    """
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    if _on("rope") and fused_enabled(x) and cos.shape[0] == 1:
        # use_neox_rotary_style=False is the rotate-half layout (True would pair adjacent values).
        return IF.fused_rotary_position_embedding(x, None, None, sin=sin, cos=cos, use_neox_rotary_style=False)[0]
    return x * cos + rotate_half(x) * sin


def causal_attention(query, key, value):
    """Causal attention over a fresh sequence, [B, T, H, D] in and out; key/value may have fewer heads.

    For prefill without padding or cached keys, where the causal triangle is all the mask there is:
    Paddle's SDPA aligns it top-left, which is only right when queries and keys are the same tokens.
    """
    if _on("sdpa") and fused_enabled(query):
        return F.scaled_dot_product_attention(query, key, value, is_causal=True, training=False)
    length = query.shape[1]
    mask = paddle.tril(paddle.ones([length, length], dtype="bool")).unsqueeze(0).unsqueeze(0)
    out = grouped_attention(*(t.transpose([0, 2, 1, 3]) for t in (query, key, value)), mask)
    return out.transpose([0, 2, 1, 3])


def grouped_attention(query, key, value, mask=None):
    """Grouped-query attention without repeating K/V.

    query [B, H, T, D]; key/value [B, KV, S, D]; mask bool [B, 1, T, S] (True = attend), or None
    when every query may see every key (decoding one token without padding).
    """
    batch, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    q = query.reshape([batch, kv_heads, groups * q_len, dim])
    scores = paddle.matmul(q, key, transpose_y=True)
    if scores.dtype != paddle.float32:
        scores = scores.astype("float32")
    scores = scores / math.sqrt(dim)
    if mask is not None:
        scores = scores.reshape([batch, kv_heads, groups, q_len, kv_len])
        scores = paddle.where(mask.unsqueeze(1), scores, paddle.full([], -1e30, "float32"))
    probs = F.softmax(scores, axis=-1).astype(value.dtype).reshape([batch, kv_heads, groups * q_len, kv_len])
    return paddle.matmul(probs, value).reshape([batch, heads, q_len, dim])


def cached_attention(qkv, cos, sin, keys, values, past, heads, kv_heads, mask=None):
    """Rotary grouped-query attention for T new tokens after `past` cached ones, storing their keys and values.

    qkv [B, T, (heads + 2 kv_heads) D] is the fused projection; cos/sin [B, T, D]; keys/values
    [B, kv_heads, L, D] hold `past` positions and get positions past..past+T-1 in place. `mask`
    bool [B, 1, T, past + T] (padding, a window), or None for plain causal attention. Returns
    [B, T, heads D]. On CPU one C++ call does what ~30 eager ops do: the decoding step (T = 1) and,
    with MKL, the prefill.
    """
    module = _native_for(qkv)
    batch, steps, dim = qkv.shape[0], qkv.shape[1], keys.shape[-1]
    name = "paddlemix_decode_attention" if steps == 1 else "paddlemix_prefill_attention"  # the prefill needs MKL
    op = None if module is None else getattr(module, name, None)
    if op is not None and keys.dtype == paddle.float32:
        # A window without padding comes as one [1, 1, T, S] mask for every row; empty means causal only.
        mask = _empty_bool() if mask is None else mask.expand([batch, 1, steps, past + steps]).contiguous()
        return op(qkv.contiguous(), cos.contiguous(), sin.contiguous(), keys, values, mask, heads, kv_heads, past,
                  native_isa()[1])[0]
    qkv = qkv.reshape([batch, steps, heads + 2 * kv_heads, dim])
    qk, v = paddle.split(qkv, [heads + kv_heads, kv_heads], axis=2)
    q, k = paddle.split(apply_rotary(qk, cos, sin), [heads, kv_heads], axis=2)
    keys[:, :, past:past + steps] = k.transpose([0, 2, 1, 3])
    values[:, :, past:past + steps] = v.transpose([0, 2, 1, 3])
    if mask is None and past == 0:
        out = causal_attention(q, k, v)
    else:
        if mask is None:  # causal over the cached keys too: query t sits at position past + t
            mask = paddle.arange(past + steps).unsqueeze(0) <= (paddle.arange(steps) + past).unsqueeze(1)
            mask = mask.unsqueeze(0).unsqueeze(0)
        out = grouped_attention(q.transpose([0, 2, 1, 3]), keys[:, :, :past + steps], values[:, :, :past + steps],
                                mask).transpose([0, 2, 1, 3])
    return out.reshape([batch, steps, heads * dim])


def decode_layer(x, cos, sin, keys, values, past, heads, kv_heads, mask, norms, projections, eps):
    """One decoding step of a whole decoder layer in one C++ call on CPU, or None where it cannot run.

    x [B, 1, C] (B <= LOWP_MAX_ROWS); cos/sin, keys/values, past and mask as in `cached_attention`;
    `norms`: the two RMSNorm weights; `projections`: (weight [out, in] bf16 or int8, int8 scale or
    None, bias or None) for q/k/v, o, gate/up and down. Returns the layer's output, the same numbers
    as norm, attention, residual, norm, SwiGLU MLP and residual op by op (summation order aside).
    """
    module = _native_for(x)
    if (module is None or not hasattr(module, "paddlemix_decode_layer") or x.shape[0] > LOWP_MAX_ROWS
            or keys.dtype != paddle.float32 or any(n.dtype != paddle.float32 for n in norms) or _needs_grad(*norms)):
        return None
    params = list(norms)
    for weight, scale, bias in projections:
        params += [weight, _no_bias() if scale is None else scale, _no_bias() if bias is None else bias]
    mask = _empty_bool() if mask is None else mask.expand([x.shape[0], 1, 1, past + 1]).contiguous()
    return module.paddlemix_decode_layer(x.contiguous(), cos.contiguous(), sin.contiguous(), keys, values, mask,
                                         params, float(eps), heads, kv_heads, past, native_isa()[1])[0]


def packed_attention(qkv, heads):
    """Unmasked attention (InternViT) over the packed projection qkv [B, L, 3 C] ([q | k | v]), [B, L, C] out."""
    batch, length, width = qkv.shape
    dim = width // 3 // heads
    module = _native_for(qkv)
    if module is not None and hasattr(module, "paddlemix_packed_attention"):
        return module.paddlemix_packed_attention(qkv.contiguous(), heads, dim ** -0.5, native_isa()[1])
    q, k, v = (t.reshape([batch, length, heads, dim]) for t in qkv.chunk(3, axis=-1))
    return full_attention(q, k, v).reshape([batch, length, width // 3])


def scaled_add(x, branch, scale):
    """x + branch * scale over the last axis (InternViT's layer-scaled residual), one pass on CPU."""
    module = _native_for(x)
    if module is not None and not _needs_grad(branch, scale):
        return module.paddlemix_scaled_add(x.contiguous(), branch.contiguous(), scale, native_isa()[1])
    return x + branch * scale


def scaled_add_layer_norm(x, branch, scale, weight, bias, eps):
    """(layer_norm(x + branch * scale), x + branch * scale): InternViT's residual and the next LayerNorm."""
    module = _native_for(x)
    if module is not None and not _needs_grad(branch, scale, weight, bias):
        out, total = module.paddlemix_scaled_add_layer_norm(x.contiguous(), branch.contiguous(), scale, weight, bias,
                                                            float(eps), native_isa()[1])
        return out, total
    total = x + branch * scale
    return F.layer_norm(total, total.shape[-1:], weight, bias, eps), total


def full_attention(query, key, value):
    """Unmasked attention (InternViT), [B, L, H, D] in and out."""
    if _on("sdpa") and fused_enabled(query):
        return F.scaled_dot_product_attention(query, key, value, training=False)
    scale = query.shape[-1] ** -0.5
    module = _native_for(query)
    if module is not None and hasattr(module, "paddlemix_attention"):
        return module.paddlemix_attention(query.contiguous(), key.contiguous(), value.contiguous(), scale,
                                          native_isa()[1])
    q, k, v = (t.transpose([0, 2, 1, 3]) for t in (query, key, value))
    probs = scaled_softmax(paddle.matmul(q, k, transpose_y=True), scale).astype(v.dtype)
    return paddle.matmul(probs, v).transpose([0, 2, 1, 3])


# The bodies of the C++ kernels (csrc/cpu_kernels.cc), best first, with the CPU feature each needs.
NATIVE_BODIES = (("avx512", 2, "avx512f"), ("avx2", 1, "avx2+fma"), ("plain", 0, None))
LOWP_MAX_ROWS = 16  # up to here a product streams the weight once; beyond, it is a GEMM
_forced_body = []


@contextlib.contextmanager
def native_body(name):
    """Within the block the C++ kernels run body `name` ("avx512", "avx2" or "plain"); for tests."""
    if name not in [body for body, _, _ in NATIVE_BODIES]:
        raise ValueError(f"unknown body {name!r}; known: {', '.join(body for body, _, _ in NATIVE_BODIES)}")
    _forced_body.append(name)
    try:
        yield
    finally:
        _forced_body.pop()


def native_isa():
    """(name, code) of the best C++ kernel body this CPU runs; asked of the CPU, never assumed."""
    for name, code, feature in NATIVE_BODIES:
        if _forced_body and name != _forced_body[-1]:
            continue
        if feature is None or CPU_FEATURE_QUERIES[feature]():
            if (name, "body") not in _logged_choices:
                _logged_choices.add((name, "body"))
                logger.debug("C++ CPU kernels: the %s body", name)
            return name, code
    raise RuntimeError(f"this CPU cannot run the {_forced_body[-1]} body")


def _native_for(x):
    """The C++ kernels for float32 inference work on the CPU, or None (then the plain ops run)."""
    if ENABLED and _on("native") and x.place.is_cpu_place() and x.dtype == paddle.float32 and not _needs_grad(x):
        return native.ops()
    return None


def scaled_softmax(scores, scale):
    """softmax(scale * scores) over the last axis, in float32 (Paddle's CPU softmax is ~10x slower)."""
    module = _native_for(scores)
    if module is not None:
        return module.paddlemix_scaled_softmax(scores, float(scale), native_isa()[1])
    return F.softmax(scores.astype("float32") * scale, axis=-1)


def gelu(x):
    """The exact (erf) GELU."""
    module = _native_for(x)
    if module is not None:
        return module.paddlemix_gelu(x, native_isa()[1])
    return F.gelu(x, approximate=False)


def lowp_linear(x, weight, scale=None, bias=None, with_gelu=False):
    """x [..., K] float32 times a bfloat16 or int8 weight [N, K] (the checkpoint's [out, in] layout), plus `bias`,
    then the exact GELU if `with_gelu`.

    For int8, `scale` [N] multiplies each output. On CPU the C++ kernels run: up to LOWP_MAX_ROWS rows
    a product that streams the weight once and adds the bias itself; more rows of a bf16 weight,
    MKL's sgemm over weight rows widened per thread into a reused buffer. Otherwise, and without the
    kernels, the weight is widened and multiplied by the plain ops (the same numbers up to summation
    order).
    """
    rows = math.prod(x.shape[:-1])
    if x.dtype != paddle.float32:
        x = x.astype("float32")
    module = _native_for(x)
    if module is not None:
        _, code = native_isa()
        if rows > LOWP_MAX_ROWS and scale is None and hasattr(module, "paddlemix_bf16_gemm"):
            if bias is None:
                out = module.paddlemix_bf16_gemm(x, weight, code)
            elif with_gelu:  # on each thread's columns right after its product
                return module.paddlemix_bf16_gemm_bias_gelu(x, weight, bias, code)
            else:
                out = module.paddlemix_bf16_gemm_bias(x, weight, bias, code)
            return gelu(out) if with_gelu else out
        if rows <= LOWP_MAX_ROWS:
            bias = _no_bias() if bias is None else bias
            out = (module.paddlemix_bf16_linear(x, weight, bias, code) if scale is None
                   else module.paddlemix_int8_linear(x, weight, scale, bias, code))
            return gelu(out) if with_gelu else out
    out = paddle.matmul(x, weight.astype("float32"), transpose_y=True)
    out = out if scale is None else out * scale
    out = out if bias is None else out + bias
    return gelu(out) if with_gelu else out


_empty = {}


def _no_bias():
    """The C++ products' "no bias": an empty float32 CPU tensor, made on first use (not at import)."""
    if "bias" not in _empty:
        _empty["bias"] = paddle.zeros([0], dtype="float32", device="cpu")
    return _empty["bias"]


def _empty_bool():
    """The C++ attention's "no mask" (causal only)."""
    if "mask" not in _empty:
        _empty["mask"] = paddle.zeros([0], dtype="bool", device="cpu")
    return _empty["mask"]
