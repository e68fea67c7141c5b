"""Compact weights: the checkpoint's bf16 kept as stored on CPU, or weight-only int8.

`Bf16Linear` (CPU inference of a bf16 checkpoint, see `from_pretrained(cpu_bf16_weights=...)`; the
Linear layers of the language model and the ViT) keeps the checkpoint's bf16 weight as it is
stored, [out, in], and computes in float32; `Bf16Embedding` does the same for the token embeddings.
Widening bf16 is exact, so the numbers are the float32 model's up to summation order, with half the
weight bytes to hold and to read per token.

Weight-only int8 (`from_pretrained(quant="weight_only_int8")`) is per output channel and symmetric:
scale = max|w| / 127 over the input axis and q = round(w / scale), the values Paddle's
`weight_quantize(algo="weight_only_int8")` computes before it reorders them for its GPU kernel. On
a GPU the layer runs that kernel (`weight_only_linear`); on CPU it keeps [out, in] int8 and runs
this project's int8 kernel (kernels.lowp_linear). Either way it reads a quarter of the fp32 bytes
per token. The LM head, the ViT and the projector keep their weights.
"""
import paddle
from paddle import nn

from .kernels import fused_enabled, lowp_linear

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


class Bf16Linear(nn.Layer):
    """Inference only: the weight as the checkpoint stores it, bf16 [out, in]; float32 in and out."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = self.create_parameter([out_features, in_features], dtype="bfloat16")
        self.weight.stop_gradient = True
        self.bias = self.create_parameter([out_features], dtype="float32", is_bias=True) if bias else None

    @classmethod
    def like(cls, linear):
        """An uninitialised Bf16Linear of `linear`'s shape, to be filled from the checkpoint."""
        in_features, out_features = linear.weight.shape
        return cls(in_features, out_features, bias=linear.bias is not None)

    def forward(self, x, with_gelu=False):
        """`with_gelu`: gelu(this layer(x)), the GELU fused into the product where the C++ GEMM runs."""
        if self.training:
            raise RuntimeError("this model keeps the checkpoint's bf16 weights for inference; load it with "
                               "from_pretrained(..., cpu_bf16_weights=False) to train")
        return lowp_linear(x, self.weight, bias=self.bias, with_gelu=with_gelu)


class Bf16Embedding(nn.Layer):
    """Inference only: the token embedding table as the checkpoint stores it, bf16; float32 rows out."""

    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.weight = self.create_parameter([num_embeddings, embedding_dim], dtype="bfloat16")
        self.weight.stop_gradient = True

    @classmethod
    def like(cls, embedding):
        return cls(*embedding.weight.shape)

    def forward(self, ids):
        return paddle.nn.functional.embedding(ids, self.weight).astype("float32")


class WeightOnlyInt8Linear(nn.Layer):
    """A Linear layer whose weight is kept as int8 plus one scale per output feature.

    On GPU the weight is in the layout of Paddle's kernel; on CPU it is [out, in], for lowp_linear.
    """

    def __init__(self, linear):
        super().__init__()
        self.bias = linear.bias
        self.on_gpu = fused_enabled(linear.weight)
        if self.on_gpu:
            self.arch = gpu_arch()
            values, scale = paddle.nn.quant.weight_quantize(linear.weight, algo="weight_only_int8", arch=self.arch)
        else:
            weight = linear.weight.astype("float32")
            values, scale = quantize_int8(weight.T if isinstance(linear, Bf16Linear) else weight)
            values = values.T.contiguous()
        self.register_buffer("weight_int8", values)
        self.register_buffer("weight_scale", scale)

    def forward(self, x):
        if self.on_gpu:
            return paddle.nn.quant.weight_only_linear(x, self.weight_int8, self.bias, self.weight_scale,
                                                      weight_dtype="int8", arch=self.arch)
        return lowp_linear(x, self.weight_int8, self.weight_scale, bias=self.bias)


def lowp_parts(layer):
    """(weight [out, in], int8 scale or None, bias or None) of a layer run by the CPU kernels, else None."""
    if isinstance(layer, Bf16Linear):
        return layer.weight, None, layer.bias
    if isinstance(layer, WeightOnlyInt8Linear) and not layer.on_gpu:
        return layer.weight_int8, layer.weight_scale, layer.bias
    return None


def quantize_language_model(language_model, method):
    """Swap every Linear layer of the decoder stack for its `method` version, in place."""
    check_method(method)
    dtype = language_model.embed_tokens.weight.dtype
    on_gpu = fused_enabled(language_model.embed_tokens.weight)
    if on_gpu and dtype == paddle.float32:
        raise ValueError("weight_only_int8 on a GPU needs --dtype bfloat16 or float16, not float32")
    for layer in language_model.layers:
        for parent in layer.sublayers(include_self=True):
            for name, child in list(parent.named_children()):
                if isinstance(child, (nn.Linear, Bf16Linear)):
                    setattr(parent, name, WeightOnlyInt8Linear(child))


def keep_bf16_weights(model, layer_names):
    """Swap the named nn.Linear and nn.Embedding layers of `model` for uninitialised bf16 ones of the same shape."""
    layers = dict(model.named_sublayers())
    for name in layer_names:
        parent_name, _, child = name.rpartition(".")
        parent = layers[parent_name] if parent_name else model
        kind = Bf16Embedding if isinstance(layers[name], nn.Embedding) else Bf16Linear
        setattr(parent, child, kind.like(layers[name]))
