"""Weight-only int8 for the decoder's Linear layers (`from_pretrained(quant="weight_only_int8")`).

Per output channel and symmetric: scale = max|w| / 127 over the input axis and q = round(w / scale),
the values Paddle's `weight_quantize(algo="weight_only_int8")` computes before it reorders them for
its GPU kernel. On a GPU the layer runs that kernel (`weight_only_linear`), which reads a quarter of
the fp32 bytes per token, so bandwidth-bound decoding speeds up. Elsewhere it multiplies by the
dequantised weight: the same numbers and a quarter of the decoder's weight memory, but slower
decoding, since Paddle has no CPU int8 kernel. The LM head, the ViT and the projector stay as they are.
"""
import logging

import paddle
from paddle import nn

from .kernels import fused_enabled

logger = logging.getLogger(__name__)

QUANT_METHODS = ("weight_only_int8",)


def check_method(method):
    """Reject an unknown quantization by name, before anything is downloaded or loaded."""
    if method not in QUANT_METHODS:
        raise ValueError(f"unknown quantization {method!r}; choose one of {', '.join(QUANT_METHODS)}")


def quantize_int8(weight):
    """(int8 values, float32 scale per output column) of a [in, out] weight."""
    weight = weight.astype("float32")
    scale = weight.abs().max(axis=0) / 127.0
    scale = paddle.where(scale > 0, scale, paddle.ones_like(scale))  # an all-zero column stays zero
    values = paddle.clip(paddle.round(weight / scale), -127, 127).astype("int8")
    return values, scale


def gpu_arch():
    """CUDA compute capability as Paddle's int8 kernels name it (8.0 -> 80)."""
    major, minor = paddle.device.cuda.get_device_capability()
    return major * 10 + minor


class WeightOnlyInt8Linear(nn.Layer):
    """A Linear layer whose weight is kept as int8 plus one scale per output feature."""

    def __init__(self, linear):
        super().__init__()
        weight = linear.weight
        self.bias = linear.bias
        self.on_gpu = fused_enabled(weight)
        if self.on_gpu:
            self.arch = gpu_arch()
            values, scale = paddle.nn.quant.weight_quantize(weight, algo="weight_only_int8", arch=self.arch)
        else:
            values, scale = quantize_int8(weight)
        self.register_buffer("weight_int8", values)
        self.register_buffer("weight_scale", scale)

    def forward(self, x):
        if self.on_gpu:
            return paddle.nn.quant.weight_only_linear(x, self.weight_int8, self.bias, self.weight_scale,
                                                      weight_dtype="int8", arch=self.arch)
        out = paddle.matmul(x, self.weight_int8.astype(x.dtype)) * self.weight_scale.astype(x.dtype)
        return out if self.bias is None else out + self.bias


def quantize_language_model(language_model, method):
    """Swap every Linear layer of the decoder stack for its `method` version, in place."""
    check_method(method)
    dtype = language_model.embed_tokens.weight.dtype
    on_gpu = fused_enabled(language_model.embed_tokens.weight)
    if on_gpu and dtype == paddle.float32:
        raise ValueError("weight_only_int8 on a GPU needs --dtype bfloat16 or float16, not float32")
    if not on_gpu:
        logger.warning("weight_only_int8 off GPU: int8 weights take a quarter of the memory, but every step "
                       "dequantises them, so decoding is slower than in float32")
    for layer in language_model.layers:
        for parent in layer.sublayers(include_self=True):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, WeightOnlyInt8Linear(child))
