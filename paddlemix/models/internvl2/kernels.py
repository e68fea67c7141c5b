"""Fused GPU kernels behind one switch, with the plain Paddle ops as the fallback everywhere else.

Each function computes the same maths on both paths (tests run both and compare), so the model code
does not care which one ran. The fused path is taken only for tensors on a CUDA GPU: on CPU Paddle
either lacks these kernels (fused RoPE) or runs them slower than the plain ops (its SDPA took
453 ms per InternViT layer against 300 ms, see docs/performance.md), and NPUs take the plain ops too.
Set PADDLEMIX_FUSED_KERNELS=0 to compare against the plain path on a GPU.
"""
import math
import os

import paddle
import paddle.incubate.nn.functional as IF
import paddle.nn.functional as F

ENABLED = os.environ.get("PADDLEMIX_FUSED_KERNELS", "1") != "0"


def fused_enabled(tensor):
    """Whether work on `tensor` goes to the fused kernels."""
    return ENABLED and tensor.place.is_gpu_place()


def rms_norm(x, weight, eps):
    """weight * x / rms(x), the RMS taken in float32 as the reference models do."""
    if fused_enabled(x):
        return IF.fused_rms_norm(x, weight, None, eps, begin_norm_axis=x.ndim - 1)[0]
    x32 = x.astype("float32")
    x32 = x32 * paddle.rsqrt(x32.pow(2).mean(axis=-1, keepdim=True) + eps)
    return weight * x32.astype(x.dtype)


def rotate_half(x):
    first, second = x.chunk(2, axis=-1)
    return paddle.concat([-second, first], axis=-1)


def apply_rotary(q, k, cos, sin):
    """RoPE on q [B, T, H, D] and k [B, T, KV, D] with cos/sin [B, T, D] (halves rotated, as in HF).

    The fused kernel takes one cos/sin row set for the whole batch, so it runs for batch 1
    (a chat turn); batches, whose rows have their own positions, take the plain ops.
    """
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    if fused_enabled(q) and cos.shape[0] == 1:
        # use_neox_rotary_style=False is the rotate-half layout (True would pair adjacent values).
        q, k, _ = IF.fused_rotary_position_embedding(q, k, None, sin=sin, cos=cos, use_neox_rotary_style=False)
        return q, k
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def causal_attention(query, key, value):
    """Causal attention over a fresh sequence, [B, T, H, D] in and out; key/value may have fewer heads.

    For prefill without padding or cached keys, where the causal triangle is all the mask there is:
    Paddle's SDPA aligns it top-left, which is only right when queries and keys are the same tokens.
    """
    if fused_enabled(query):
        return F.scaled_dot_product_attention(query, key, value, is_causal=True, training=False)
    length = query.shape[1]
    mask = paddle.tril(paddle.ones([length, length], dtype="bool")).unsqueeze(0).unsqueeze(0)
    out = grouped_attention(*(t.transpose([0, 2, 1, 3]) for t in (query, key, value)), mask)
    return out.transpose([0, 2, 1, 3])


def grouped_attention(query, key, value, mask):
    """Grouped-query attention without repeating K/V.

    query [B, H, T, D]; key/value [B, KV, S, D]; mask bool [B, 1, T, S] (True = attend).
    """
    batch, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    q = query.reshape([batch, kv_heads, groups * q_len, dim])
    scores = paddle.matmul(q, key, transpose_y=True).astype("float32") / math.sqrt(dim)
    scores = scores.reshape([batch, kv_heads, groups, q_len, kv_len])
    scores = paddle.where(mask.unsqueeze(1), scores, paddle.full([], -1e30, "float32"))
    probs = F.softmax(scores, axis=-1).astype(value.dtype).reshape([batch, kv_heads, groups * q_len, kv_len])
    return paddle.matmul(probs, value).reshape([batch, heads, q_len, dim])


def full_attention(query, key, value):
    """Unmasked attention (InternViT), [B, L, H, D] in and out."""
    if fused_enabled(query):
        return F.scaled_dot_product_attention(query, key, value, training=False)
    q, k, v = (t.transpose([0, 2, 1, 3]) for t in (query, key, value))
    scores = paddle.matmul(q * (q.shape[-1] ** -0.5), k, transpose_y=True)
    probs = F.softmax(scores.astype("float32"), axis=-1).astype(v.dtype)
    return paddle.matmul(probs, v).transpose([0, 2, 1, 3])
