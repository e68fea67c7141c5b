"""InternViT (300M and 6B) and the `mlp1` projector with pixel shuffle.

Parameter names mirror the original checkpoint (`vision_model.embeddings...`,
`encoder.layers.N.attn.qkv`, `ls1`, `mlp1.0/1/3`), so loading is a name-for-name copy.
"""
import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.distributed.fleet.utils import recompute

from .kernels import Linear, full_attention, gelu, packed_attention, scaled_add, scaled_add_layer_norm
from .llm import RMSNorm
from .quant import Bf16Linear


def make_norm(config, size):
    if config.norm_type == "rms_norm":
        return RMSNorm(size, config.layer_norm_eps)
    return nn.LayerNorm(size, epsilon=config.layer_norm_eps)


class DropPath(nn.Layer):
    """Stochastic depth: drops the residual branch per sample, in training only."""

    def __init__(self, rate):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = paddle.bernoulli(paddle.full([x.shape[0]] + [1] * (x.ndim - 1), keep, dtype=x.dtype))
        return x * mask / keep


class VisionEmbeddings(nn.Layer):
    def __init__(self, config):
        super().__init__()
        self.patch_size = config.patch_size
        self.grid = config.image_size // config.patch_size
        self.class_embedding = self.create_parameter([1, 1, config.hidden_size])
        self.patch_embedding = nn.Conv2D(config.num_channels, config.hidden_size, config.patch_size,
                                         stride=config.patch_size)
        self.position_embedding = self.create_parameter([1, self.grid * self.grid + 1, config.hidden_size])

    def _patch_positions(self, height, width):
        """The patch part of the position table, bicubically resized when the grid differs."""
        table = self.position_embedding[:, 1:]
        if (height, width) == (self.grid, self.grid):
            return table
        dtype = table.dtype
        table = table.astype("float32").reshape([1, self.grid, self.grid, -1]).transpose([0, 3, 1, 2])
        table = F.interpolate(table, size=(height, width), mode="bicubic", align_corners=False)
        return table.reshape([1, -1, height * width]).transpose([0, 2, 1]).astype(dtype)

    def forward(self, pixel_values):
        patches = self.patch_embedding(pixel_values)
        batch, channels, height, width = patches.shape
        patches = patches.flatten(2).transpose([0, 2, 1])
        cls = self.class_embedding.expand([batch, 1, channels]).astype(patches.dtype)
        positions = paddle.concat([self.position_embedding[:, :1], self._patch_positions(height, width)], axis=1)
        return paddle.concat([cls, patches], axis=1) + positions.astype(patches.dtype)


class VisionAttention(nn.Layer):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.qkv = Linear(config.hidden_size, 3 * config.hidden_size, bias_attr=None if config.qkv_bias else False)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            # Over all heads at once, before the head split, as the original does.
            self.q_norm = RMSNorm(config.hidden_size, config.layer_norm_eps)
            self.k_norm = RMSNorm(config.hidden_size, config.layer_norm_eps)
        self.proj = Linear(config.hidden_size, config.hidden_size)

    def forward(self, x):
        batch, length, channels = x.shape
        if not self.qk_normalization:
            return self.proj(packed_attention(self.qkv(x), self.num_heads))
        q, k, v = self.qkv(x).chunk(3, axis=-1)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.reshape([batch, length, self.num_heads, self.head_dim]) for t in (q, k, v))
        return self.proj(full_attention(q, k, v).reshape([batch, length, channels]))


class VisionMLP(nn.Layer):
    def __init__(self, config):
        super().__init__()
        self.fc1 = Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        if isinstance(self.fc1, Bf16Linear):
            return self.fc2(self.fc1(x, with_gelu=True))
        return self.fc2(gelu(self.fc1(x)))


class VisionEncoderLayer(nn.Layer):
    def __init__(self, config, drop_path_rate):
        super().__init__()
        self.attn = VisionAttention(config)
        self.mlp = VisionMLP(config)
        self.norm1 = make_norm(config, config.hidden_size)
        self.norm2 = make_norm(config, config.hidden_size)
        scale = nn.initializer.Constant(config.initializer_factor)
        self.ls1 = self.create_parameter([config.hidden_size], default_initializer=scale)
        self.ls2 = self.create_parameter([config.hidden_size], default_initializer=scale)
        self.drop_path1 = DropPath(drop_path_rate)
        self.drop_path2 = DropPath(drop_path_rate)

    def forward(self, x):
        if self.training:
            x = x + self.drop_path1(self.attn(self.norm1(x)) * self.ls1)
            return x + self.drop_path2(self.mlp(self.norm2(x)) * self.ls2)
        attended = self.attn(self.norm1(x))  # without drop path: the residual adds and norm2 fuse on CPU
        if isinstance(self.norm2, nn.LayerNorm):
            normed, x = scaled_add_layer_norm(x, attended, self.ls1, self.norm2.weight, self.norm2.bias,
                                              self.norm2._epsilon)
        else:
            x = scaled_add(x, attended, self.ls1)
            normed = self.norm2(x)
        return scaled_add(x, self.mlp(normed), self.ls2)


class VisionEncoder(nn.Layer):
    def __init__(self, config):
        super().__init__()
        rates = np.linspace(0, config.drop_path_rate, config.num_hidden_layers)
        self.layers = nn.LayerList([VisionEncoderLayer(config, float(rate)) for rate in rates])
        self.gradient_checkpointing = False

    def forward(self, x, output_hidden_states=False):
        """Last hidden state, and (with output_hidden_states) the embeddings plus every layer's output."""
        hidden_states = [x] if output_hidden_states else None
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                # Non-reentrant: LoRA adapters get gradients even when the input needs none (frozen embeddings).
                x = recompute(layer, x, use_reentrant=False)
            else:
                x = layer(x)
            if output_hidden_states:
                hidden_states.append(x)
        return x, hidden_states


class InternVisionModel(nn.Layer):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.encoder = VisionEncoder(config)

    def forward(self, pixel_values, output_hidden_states=False):
        return self.encoder(self.embeddings(pixel_values), output_hidden_states)


def pixel_shuffle(x, scale_factor=0.5, ps_version="v2"):
    """[N, W, H, C] -> [N, W*s, H*s, C/s^2]: trades spatial tokens for channels.

    v1 leaves the grid transposed; it is kept for checkpoints trained with it.
    """
    n, w, h, c = x.shape
    x = x.reshape([n, w, int(h * scale_factor), int(c / scale_factor)])
    x = x.transpose([0, 2, 1, 3])
    x = x.reshape([n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor))])
    if ps_version != "v1":
        x = x.transpose([0, 2, 1, 3])
    return x


class Projector(nn.Sequential):
    """`mlp1`: LayerNorm -> Linear -> GELU (exact) -> Linear, keys mlp1.0/1/3."""

    def __init__(self, vit_hidden, llm_hidden, downsample_ratio):
        shuffled = vit_hidden * int(1 / downsample_ratio) ** 2
        super().__init__(
            nn.LayerNorm(shuffled),
            Linear(shuffled, llm_hidden),
            nn.GELU(approximate=False),
            Linear(llm_hidden, llm_hidden),
        )
