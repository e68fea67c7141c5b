"""One decoder-only LLM core for every InternVL2 language model.

Qwen2, Llama/Yi, InternLM2 and Phi-3 are the same network: RMSNorm, rotary
attention with grouped KV heads, and a SwiGLU MLP. They differ only in
  * how the checkpoint names and fuses the weights (`CHECKPOINT_LAYOUTS`), and
  * how RoPE frequencies are scaled (`rope_frequencies`).
The core always keeps fused `qkv_proj` ([Q|K|V]) and `gate_up_proj` ([gate|up])
matmuls, which is also the fast layout on every device.
"""
import math

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.distributed.fleet.utils import recompute

from .config import rope_type
from .kernels import (Linear, add_rms_norm, apply_rotary, cached_attention, causal_attention, decode_layer,
                      grouped_attention, rms_norm, swiglu)
from .quant import lowp_parts


class RMSNorm(nn.Layer):
    """x / rms(x) * weight, computed in float32 like the reference models."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = self.create_parameter([hidden_size], default_initializer=nn.initializer.Constant(1.0))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)

    def add_and_norm(self, x, residual):
        """(this norm of x + residual, x + residual)."""
        return add_rms_norm(x, residual, self.weight, self.eps)


# --- checkpoint layouts ------------------------------------------------------
# Paddle module path (under `language_model.`) -> checkpoint module path(s).
# A list means the checkpoint stores the parts separately and we concatenate
# them along the output dimension.
_LLAMA_LAYOUT = {
    "embed_tokens": "model.embed_tokens",
    "norm": "model.norm",
    "lm_head": "lm_head",
    "layers": "model.layers",
    "input_layernorm": "input_layernorm",
    "post_attention_layernorm": "post_attention_layernorm",
    "self_attn.qkv_proj": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    "self_attn.o_proj": "self_attn.o_proj",
    "mlp.gate_up_proj": ["mlp.gate_proj", "mlp.up_proj"],
    "mlp.down_proj": "mlp.down_proj",
}
CHECKPOINT_LAYOUTS = {
    "qwen2": _LLAMA_LAYOUT,
    "llama": _LLAMA_LAYOUT,
    "phi3": dict(_LLAMA_LAYOUT, **{"self_attn.qkv_proj": "self_attn.qkv_proj", "mlp.gate_up_proj": "mlp.gate_up_proj"}),
    "internlm2": {
        "embed_tokens": "model.tok_embeddings",
        "norm": "model.norm",
        "lm_head": "output",
        "layers": "model.layers",
        "input_layernorm": "attention_norm",
        "post_attention_layernorm": "ffn_norm",
        # wqkv is grouped per KV head: [q_1..q_g, k, v] for each group.
        "self_attn.qkv_proj": "attention.wqkv",
        "self_attn.o_proj": "attention.wo",
        "mlp.gate_up_proj": ["feed_forward.w1", "feed_forward.w3"],
        "mlp.down_proj": "feed_forward.w2",
    },
}


def checkpoint_names(config, name):
    """Checkpoint tensor names (without `language_model.`) for a core parameter name."""
    layout = CHECKPOINT_LAYOUTS[config.family]
    module, param = name.rsplit(".", 1)
    if module.startswith("layers."):
        _, index, inner = module.split(".", 2)
        parts = layout[inner]
        prefix = f"{layout['layers']}.{index}."
    else:
        parts, prefix = layout[module], ""
    parts = parts if isinstance(parts, list) else [parts]
    return [f"{prefix}{part}.{param}" for part in parts]


def _grouped_qkv_order(config):
    """Row permutation taking InternLM2's grouped wqkv rows to [Q|K|V] rows."""
    kv, groups, dim = config.num_key_value_heads, config.num_attention_heads // config.num_key_value_heads, config.head_dim
    rows = np.arange(kv * (groups + 2) * dim).reshape(kv, groups + 2, dim)
    q, k, v = rows[:, :groups], rows[:, groups], rows[:, groups + 1]
    return np.concatenate([q.reshape(-1), k.reshape(-1), v.reshape(-1)])


def fuse_checkpoint_parts(config, name, parts):
    """Checkpoint arrays ([out, in] layout) -> one core array, still [out, in]."""
    merged = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    if config.family == "internlm2" and ".self_attn.qkv_proj." in name:
        merged = merged[_grouped_qkv_order(config)]
    return merged


def split_checkpoint_parts(config, name, merged):
    """Inverse of `fuse_checkpoint_parts`: one core array ([out, in]) -> checkpoint arrays."""
    count = len(checkpoint_names(config, name))
    if config.family == "internlm2" and ".self_attn.qkv_proj." in name:
        merged = merged[np.argsort(_grouped_qkv_order(config))]
    if count == 1:
        return [merged]
    if ".qkv_proj." in name:
        q = config.num_attention_heads * config.head_dim
        kv = config.num_key_value_heads * config.head_dim
        return np.split(merged, [q, q + kv], axis=0)
    return np.split(merged, count, axis=0)


# --- rotary embeddings ---------------------------------------------------------
def rope_frequencies(config, base=None, long_context=False):
    """Inverse frequencies and attention scaling for one of config.ROPE_TYPES.

    Dynamic NTK only changes the base, which `RotaryEmbedding` passes in.
    """
    dim = config.head_dim
    base = config.rope_theta if base is None else base
    exponents = np.arange(0, dim, 2, dtype=np.float64) / dim
    inv_freq = 1.0 / (base ** exponents)
    scaling = config.rope_scaling or {}
    kind = rope_type(scaling)
    attention_scaling = 1.0
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        inv_freq = _llama3_frequencies(inv_freq, scaling)
    elif kind in ("su", "longrope"):
        original = _original_max_positions(config)
        factors = scaling["long_factor"] if long_context else scaling["short_factor"]
        inv_freq = inv_freq / np.asarray(factors, dtype=np.float64)
        # Official Phi-3: from the ratio of the context lengths (rope_scaling["factor"] is not read).
        factor = config.max_position_embeddings / original
        if factor > 1.0:
            attention_scaling = math.sqrt(1 + math.log(factor) / math.log(original))
    return inv_freq, attention_scaling


def _original_max_positions(config):
    return config.original_max_position_embeddings or (config.rope_scaling or {}).get(
        "original_max_position_embeddings", 0)


def _llama3_frequencies(inv_freq, scaling):
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)
    scaled = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return np.where(medium, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)


class RotaryEmbedding:
    """cos/sin tables, rebuilt when a call needs other frequencies or more positions.

    The two length-dependent scalings follow the official code call by call:
      * dynamic NTK (InternLM2; Llama in transformers 4.37): a call whose total length
        (cached plus new tokens) exceeds max_position_embeddings and every earlier call
        rebuilds the table with the base recomputed for that length. The grown table is
        kept for all later calls, shorter ones and new prompts included, and cached keys
        keep the rotation they were stored with, so decoding past the limit re-bases at
        every step.
      * su/longrope (Phi-3): each call takes the long factors when its largest position
        id + 1 exceeds original_max_position_embeddings, else the short ones (the total
        length would differ from that under left padding).
    """

    def __init__(self, config):
        self.config = config
        self.kind = rope_type(config.rope_scaling)
        self.original_max = _original_max_positions(config)
        self.longest_seen = config.max_position_embeddings
        self.long_context = False
        self.cos = self.sin = None

    def _base(self):
        config = self.config
        if self.kind != "dynamic" or self.longest_seen <= config.max_position_embeddings:
            return config.rope_theta
        factor, dim = config.rope_scaling["factor"], config.head_dim
        ratio = factor * self.longest_seen / config.max_position_embeddings - (factor - 1)
        return config.rope_theta * ratio ** (dim / (dim - 2))

    def _build(self, table_len):
        inv_freq, attention_scaling = rope_frequencies(self.config, self._base(), self.long_context)
        # float32, exactly as the reference implementations compute it.
        positions = np.arange(table_len, dtype=np.float32)
        emb = np.outer(positions, inv_freq.astype(np.float32))
        emb = np.concatenate([emb, emb], axis=-1)
        self.cos = paddle.to_tensor(np.cos(emb) * np.float32(attention_scaling))
        self.sin = paddle.to_tensor(np.sin(emb) * np.float32(attention_scaling))

    def __call__(self, position_ids, seq_len, dtype):
        """cos, sin [B, T, head_dim] for `position_ids`; `seq_len` is the total length so far."""
        stale = self.cos is None or seq_len > self.cos.shape[0]
        if self.kind == "dynamic" and seq_len > self.longest_seen:
            self.longest_seen, stale = seq_len, True
        if self.kind in ("su", "longrope"):
            long_context = int(position_ids.max()) + 1 > self.original_max
            if long_context != self.long_context:
                self.long_context, stale = long_context, True
        if stale:
            self._build(max(seq_len, 2048))
        cos = F.embedding(position_ids, self.cos)
        sin = F.embedding(position_ids, self.sin)
        return cos.astype(dtype), sin.astype(dtype)


# --- attention ------------------------------------------------------------------
class KVCache:
    """Preallocated keys/values for every layer: decoding writes in place, never re-runs the prompt.

    A layer's buffers are allocated when it first stores keys, on that layer's device
    (with a device map the layers sit on several GPUs).
    """

    def __init__(self, config, batch_size, max_length, dtype, kv_heads=None):
        """`kv_heads`: the KV heads each layer holds, when not the config's (a tensor-parallel rank's share)."""
        self.shape = [batch_size, kv_heads or config.num_key_value_heads, max_length, config.head_dim]
        self.dtype = dtype
        self.keys = [None] * config.num_hidden_layers
        self.values = [None] * config.num_hidden_layers
        self.max_length = max_length
        self.length = 0

    def buffers(self, layer, place, new_tokens):
        """The whole [B, KV, max_length, D] key and value buffers of `layer`, with room checked for `new_tokens`."""
        if self.length + new_tokens > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} tokens; {self.length + new_tokens} were requested")
        if self.keys[layer] is None:
            self.keys[layer] = paddle.zeros(self.shape, dtype=self.dtype, device=place)
            self.values[layer] = paddle.zeros(self.shape, dtype=self.dtype, device=place)
        return self.keys[layer], self.values[layer]

    def reorder(self, rows):
        """Make row i a copy of row rows[i] (beam search: each beam takes over its parent's history)."""
        self.shape[0] = rows.shape[0]
        for buffers in (self.keys, self.values):
            for layer, tensor in enumerate(buffers):
                if tensor is not None:
                    buffers[layer] = paddle.gather(tensor, rows.to(tensor.place), axis=0)


class Attention(nn.Layer):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        qkv_out = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = Linear(config.hidden_size, qkv_out, bias_attr=None if config.qkv_bias else False)
        self.o_proj = Linear(self.num_heads * self.head_dim, config.hidden_size,
                             bias_attr=None if config.o_bias else False)

    def forward(self, hidden, cos, sin, mask, cache=None, layer_index=0):
        """mask None: no padding and no window cut (see `LanguageModel._needs_mask`), so a fresh
        sequence runs the causal kernel and a decoded token sees every cached key."""
        batch, length, _ = hidden.shape
        heads, kv_heads = self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(hidden)
        if cache is not None:
            keys, values = cache.buffers(layer_index, qkv.place, length)
            return self.o_proj(cached_attention(qkv, cos, sin, keys, values, cache.length, heads, kv_heads, mask))
        qkv = qkv.reshape([batch, length, heads + 2 * kv_heads, self.head_dim])
        qk, v = paddle.split(qkv, [heads + kv_heads, kv_heads], axis=2)
        q, k = paddle.split(apply_rotary(qk, cos, sin), [heads, kv_heads], axis=2)
        if mask is None:
            out = causal_attention(q, k, v)
        else:
            q, k, v = (t.transpose([0, 2, 1, 3]) for t in (q, k, v))
            out = grouped_attention(q, k, v, mask).transpose([0, 2, 1, 3])
        return self.o_proj(out.reshape([batch, length, -1]))


class MLP(nn.Layer):
    def __init__(self, config):
        super().__init__()
        bias = None if config.mlp_bias else False
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size, bias_attr=bias)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias_attr=bias)

    def forward(self, x):
        return self.down_proj(swiglu(self.gate_up_proj(x)))


class DecoderLayer(nn.Layer):
    def __init__(self, config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, hidden, cos, sin, mask, cache=None, layer_index=0):
        if cache is not None and cache.length and hidden.shape[1] == 1:
            stepped = self._decode_step(hidden, cos, sin, mask, cache, layer_index)
            if stepped is not None:
                return stepped
        attended = self.self_attn(self.input_layernorm(hidden), cos, sin, mask, cache, layer_index)
        normed, hidden = self.post_attention_layernorm.add_and_norm(attended, hidden)
        return hidden + self.mlp(normed)

    def _decode_step(self, hidden, cos, sin, mask, cache, layer_index):
        """The layer for one new token per row in one C++ call (kernels.decode_layer), or None: then op by op.

        Only for weights the CPU kernels multiply (bf16 or int8 on CPU, not float32 or adapted layers).
        """
        attn, mlp = self.self_attn, self.mlp
        projections = [lowp_parts(layer) for layer in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)]
        if any(parts is None for parts in projections):
            return None
        keys, values = cache.buffers(layer_index, hidden.place, 1)
        norms = (self.input_layernorm.weight, self.post_attention_layernorm.weight)
        return decode_layer(hidden, cos, sin, keys, values, cache.length, attn.num_heads, attn.num_kv_heads, mask,
                            norms, projections, self.input_layernorm.eps)


def build_attention_mask(attention_mask, query_length, past_length, window=None):
    """Boolean [B, 1, T, S] mask: causal, offset by the cached length, and padding-aware.

    `window` limits each query to that many keys (itself included).

    Aligning the causal triangle bottom-right (query i sits at position
    past_length + i) is what makes KV-cache decoding equal a full forward.
    """
    total = past_length + query_length
    key_pos = paddle.arange(total).unsqueeze(0)
    query_pos = (paddle.arange(query_length) + past_length).unsqueeze(1)
    allowed = key_pos <= query_pos
    if window:
        allowed = allowed & (key_pos > query_pos - window)
    allowed = allowed.unsqueeze(0).unsqueeze(0)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, :total].astype("bool").unsqueeze(1).unsqueeze(1)
    return allowed


def default_position_ids(attention_mask, past_length, query_length):
    """Positions that skip left padding: cumsum(mask) - 1, as transformers' generate does."""
    if attention_mask is None:
        return (paddle.arange(query_length) + past_length).unsqueeze(0)
    positions = attention_mask.astype("int64").cumsum(axis=-1) - 1
    positions = paddle.where(attention_mask.astype("bool"), positions, paddle.ones_like(positions))
    return positions[:, past_length:past_length + query_length]


class LanguageModel(nn.Layer):
    """Embeddings, decoder stack, final norm and an LM head."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.LayerList([DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias_attr=False)
        self.rotary = RotaryEmbedding(config)
        # Set by `place_layers` for multi-GPU inference; None keeps everything on one device.
        self.layer_devices = None
        self.head_device = None
        # Training only: recompute each layer's activations in backward (fine-tuning sets it).
        self.gradient_checkpointing = False
        # This rank's place when the layers hold tensor-parallel slices (see tensor_parallel.py).
        self.tensor_parallel = None

    def get_input_embeddings(self):
        return self.embed_tokens

    def place_layers(self, layer_devices, head_device):
        """Run decoder layer i on `layer_devices[i]`, then the final norm and LM head on `head_device`.

        The parameters must already sit there (see device_map.py); forward moves the
        activations from device to device.
        """
        if len(layer_devices) != len(self.layers):
            raise ValueError(f"{len(layer_devices)} layer devices for {len(self.layers)} layers")
        self.layer_devices, self.head_device = list(layer_devices), head_device

    def forward(self, inputs_embeds, attention_mask=None, position_ids=None, cache=None, last_logits_only=False):
        """Logits [B, T, V] (or [B, 1, V] with last_logits_only) for `inputs_embeds` [B, T, C].

        attention_mask [B, S] covers the cached plus the new tokens (1 = real token).
        """
        batch, length, _ = inputs_embeds.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, past, length)
        cos, sin = self.rotary(position_ids, past + length, inputs_embeds.dtype)
        mask = None
        if self._needs_mask(attention_mask, past, length):
            mask = build_attention_mask(attention_mask, length, past, self.config.attention_window)
        hidden = inputs_embeds
        if self.layer_devices is None:
            for index, layer in enumerate(self.layers):
                if self.gradient_checkpointing and self.training and cache is None:
                    # Non-reentrant: adapters get gradients even when the input needs none (frozen embeddings).
                    hidden = recompute(layer, hidden, cos, sin, mask, use_reentrant=False)
                else:
                    hidden = layer(hidden, cos, sin, mask, cache, index)
        else:
            hidden = self._run_placed_layers(hidden, cos, sin, mask, cache)
        if cache is not None:
            cache.length += length
        if last_logits_only:
            hidden = hidden[:, -1:]
        return self.lm_head(self.norm(hidden))

    def _needs_mask(self, attention_mask, past, length):
        """Whether attention needs an explicit mask: padding, a window cut, or new tokens after cached ones.

        Without one, a fresh sequence (a chat prefill, an unpadded training batch) runs the causal
        kernel and a single decoded token sees every key, so no mask is built or applied per step.
        """
        window = self.config.attention_window
        if (window and window < past + length) or (past and length > 1):
            return True
        return attention_mask is not None and not bool(attention_mask[:, :past + length].astype("bool").all())

    def _run_placed_layers(self, hidden, cos, sin, mask, cache):
        """The decoder stack across devices: the activations follow the layers, like accelerate's hooks."""
        current = None
        for index, (layer, device) in enumerate(zip(self.layers, self.layer_devices)):
            if device != current:
                hidden, cos, sin = (t.to(device) for t in (hidden, cos, sin))
                mask = None if mask is None else mask.to(device)
                current = device
            hidden = layer(hidden, cos, sin, mask, cache, index)
        return hidden.to(self.head_device)
