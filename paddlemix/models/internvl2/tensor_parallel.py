"""Tensor parallelism for the language model (Megatron style), over any Paddle process group.

Each of `degree` ranks holds a slice of every large weight of the language model:
  * q/k/v and gate/up are column-parallel: each rank computes whole heads (whole KV groups, so
    grouped-query attention stays local) and whole SwiGLU columns;
  * o and down are row-parallel: they take the column-parallel outputs, so a decoder layer costs one
    all-reduce after attention and one after the MLP (forward), and one before each (backward);
  * the token embeddings and the LM head are vocab-parallel when the vocabulary divides by the
    degree, else replicated;
  * the norms, the ViT and mlp1 are replicated.
Sliced parameters are marked `is_distributed`, so fleet's hybrid-parallel wrappers neither broadcast
them nor count them once per rank in the gradient norm.

`apply_tensor_parallel` swaps the layers of a model built under `paddle.LazyGuard` (nothing is
allocated yet) and `checkpoint_slices` tells the loader which rows or columns of which checkpoint
tensors each rank reads, so no rank ever holds a whole weight.
"""
import copy
import math
from dataclasses import dataclass

import paddle
import paddle.distributed as dist
import paddle.nn.functional as F
from paddle import nn
from paddle.autograd import PyLayer

from .kernels import Linear


@dataclass
class TensorParallel:
    """This rank's place in a tensor-parallel group of `degree` ranks (`group`: a Paddle process group)."""

    degree: int
    rank: int
    group: object = None

    def __post_init__(self):
        if self.degree < 1 or not 0 <= self.rank < self.degree:
            raise ValueError(f"tensor parallel rank {self.rank} of degree {self.degree} is not a valid position")
        if self.degree > 1 and self.group is None:
            raise ValueError("a tensor-parallel degree above 1 needs the process group of its ranks")

    @classmethod
    def from_fleet(cls):
        """The model-parallel group of fleet's hybrid topology (`fleet.init` with mp_degree > 1), or None."""
        from paddle.distributed import fleet

        hcg = fleet.get_hybrid_communicate_group() if fleet.fleet._hcg is not None else None
        if hcg is None or hcg.get_model_parallel_world_size() <= 1:
            return None
        return cls(hcg.get_model_parallel_world_size(), hcg.get_model_parallel_rank(),
                   hcg.get_model_parallel_group())

    @classmethod
    def over_all_processes(cls):
        """All the processes paddle.distributed.launch started as one group, or None for a single one."""
        ranks = dist.get_world_size()
        if ranks == 1:
            return None
        dist.init_parallel_env()
        return cls(ranks, dist.get_rank(), dist.new_group(list(range(ranks))))

    def part(self, size):
        """(start, stop) of this rank's even share of `size` rows."""
        share = size // self.degree
        return self.rank * share, (self.rank + 1) * share

    def all_reduce(self, x):
        """The sum of x over the group, as a new tensor."""
        total = x.clone()
        dist.all_reduce(total, group=self.group)
        return total

    def all_gather_last(self, x):
        """The ranks' x side by side along the last axis."""
        parts = []
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return paddle.concat(parts, axis=-1)


class _CopyToRanks(PyLayer):
    """Forward: x as it is (every rank has it). Backward: the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return ctx.tp.all_reduce(grad)


class _SumOverRanks(PyLayer):
    """Forward: the sum of the ranks' partial results. Backward: the gradient as it is."""

    @staticmethod
    def forward(ctx, x, tp):
        return tp.all_reduce(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clone()


class _GatherLastAxis(PyLayer):
    """Forward: the ranks' slices side by side. Backward: this rank's slice of the gradient."""

    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp, ctx.width = tp, x.shape[-1]
        return tp.all_gather_last(x)

    @staticmethod
    def backward(ctx, grad):
        start = ctx.tp.rank * ctx.width
        return grad[..., start:start + ctx.width].contiguous()


def _distributed(*params):
    for param in params:
        if param is not None:
            param.is_distributed = True


class ColumnParallelLinear(Linear):
    """This rank's output columns of a Linear; with `gather_output` every rank gets all of them."""

    def __init__(self, in_features, local_out_features, tp, bias_attr=None, gather_output=False):
        super().__init__(in_features, local_out_features, bias_attr=bias_attr)
        self.tp, self.gather_output = tp, gather_output
        _distributed(self.weight, self.bias)

    def forward(self, x):
        out = super().forward(_CopyToRanks.apply(x, self.tp))
        return _GatherLastAxis.apply(out, self.tp) if self.gather_output else out


class RowParallelLinear(Linear):
    """This rank's input rows of a Linear: partial products summed over the ranks, then the (whole) bias."""

    def __init__(self, local_in_features, out_features, tp, bias_attr=None):
        super().__init__(local_in_features, out_features, bias_attr=bias_attr)
        self.tp = tp
        _distributed(self.weight)

    def forward(self, x):
        out = _SumOverRanks.apply(F.linear(x, self.weight), self.tp)
        return out if self.bias is None else out + self.bias


class _ParallelLoRA:
    """LoRA on a tensor-parallel layer (mixed into the layer's class, keeping its parameter names):
    out + dropout(x) A B * scaling, with A or B split as the layer's weight is. The dropout draws
    the same mask on every rank of the group as long as their random states agree (the seed), as in
    paddleformers' tensor-parallel LoRA."""

    def _adapt(self, base, rank, alpha, dropout, a_shape, b_shape, fan_in):
        """Become `base` (its weight and bias, no memory of its own) with adapters A and B."""
        with paddle.LazyGuard():
            self._base_class.__init__(self, *base.weight.shape, base.tp,
                                      bias_attr=False if base.bias is None else None)
        self.weight = base.weight
        if base.bias is not None:
            self.bias = base.bias
        self.r, self.scaling, self.merged = rank, alpha / rank, False
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        kaiming = nn.initializer.KaimingUniform(fan_in=fan_in, negative_slope=math.sqrt(5), nonlinearity="leaky_relu")
        self.lora_A = self.create_parameter(a_shape, dtype=base.weight.dtype, default_initializer=kaiming)
        self.lora_B = self.create_parameter(b_shape, dtype=base.weight.dtype,
                                            default_initializer=nn.initializer.Constant(0.0))

    def forward(self, x):
        out = self._base_class.forward(self, x)
        if self.merged:
            return out
        low_rank = self._low_rank_collective.apply(self.lora_dropout(x) @ self.lora_A, self.tp)
        return out + (low_rank @ self.lora_B) * self.scaling

    def merge(self):
        """Fold the adapter into this rank's weight slice."""
        if not self.merged:
            self.weight.set_value(self.weight + self.lora_A @ self.lora_B * self.scaling)
            self.merged = True

    def merged_layer(self):
        """The plain tensor-parallel layer with the adapter folded in."""
        self.merge()
        with paddle.LazyGuard():
            plain = self._base_class(*self.weight.shape, self.tp, bias_attr=False if self.bias is None else None)
        plain.weight = self.weight
        if self.bias is not None:
            plain.bias = self.bias
        return plain


class ColumnParallelLoRALinear(_ParallelLoRA, ColumnParallelLinear):
    """A replicated on every rank (its gradient summed over them), B split by output columns."""

    _base_class, _low_rank_collective = ColumnParallelLinear, _CopyToRanks

    def __init__(self, base, rank, alpha, dropout):
        if base.gather_output:
            raise ValueError("LoRA on a column-parallel layer that gathers its output is not supported")
        in_features, local_out = base.weight.shape
        self._adapt(base, rank, alpha, dropout, [in_features, rank], [rank, local_out], in_features)
        _distributed(self.lora_B)
        if self.tp.degree > 1:  # one A for the group
            dist.broadcast(self.lora_A, src=self.tp.group.ranks[0], group=self.tp.group)


class RowParallelLoRALinear(_ParallelLoRA, RowParallelLinear):
    """A split by input rows (the product summed over the ranks), B replicated."""

    _base_class, _low_rank_collective = RowParallelLinear, _SumOverRanks

    def __init__(self, base, rank, alpha, dropout):
        local_in, out_features = base.weight.shape
        self._adapt(base, rank, alpha, dropout, [local_in, rank], [rank, out_features], local_in * base.tp.degree)
        _distributed(self.lora_A)


def parallel_lora(base, rank, alpha, dropout):
    """The LoRA layer for a tensor-parallel layer, or None for a plain Linear."""
    for layer_class, lora_class in ((ColumnParallelLinear, ColumnParallelLoRALinear),
                                    (RowParallelLinear, RowParallelLoRALinear)):
        if isinstance(base, layer_class):
            return lora_class(base, rank, alpha, dropout)
    return None


class VocabParallelEmbedding(nn.Embedding):
    """This rank's rows of the token embeddings; ids of other ranks' rows give zeros, and the sum over
    the ranks is the whole lookup."""

    def __init__(self, num_embeddings, embedding_dim, tp):
        start, stop = tp.part(num_embeddings)
        super().__init__(stop - start, embedding_dim)
        self.tp, self.start, self.stop = tp, start, stop
        _distributed(self.weight)

    def forward(self, ids):
        local = ids - self.start
        mine = (local >= 0) & (local < self.stop - self.start)
        rows = F.embedding(paddle.where(mine, local, paddle.zeros_like(local)), self.weight)
        return _SumOverRanks.apply(rows * mine.unsqueeze(-1).astype(rows.dtype), self.tp)


def vocab_is_split(config, tp):
    return tp.degree > 1 and config.vocab_size % tp.degree == 0


def check_divisible(config, degree):
    """One sentence for a configuration that `degree` ranks cannot split, else None."""
    for what, count in (("attention heads", config.num_attention_heads), ("KV heads", config.num_key_value_heads),
                        ("MLP columns", config.intermediate_size)):
        if count % degree:
            return f"the language model's {count} {what} do not split over {degree} tensor-parallel ranks"
    return None


def apply_tensor_parallel(language_model, tp):
    """Give every rank its slice of the language model's layers (call under paddle.LazyGuard)."""
    config = language_model.config
    problem = check_divisible(config, tp.degree)
    if problem:
        raise ValueError(problem)
    dim, hidden, degree = config.head_dim, config.hidden_size, tp.degree
    for layer in language_model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.num_heads //= degree
        attn.num_kv_heads //= degree
        attn.qkv_proj = ColumnParallelLinear(hidden, (attn.num_heads + 2 * attn.num_kv_heads) * dim, tp,
                                             bias_attr=None if config.qkv_bias else False)
        attn.o_proj = RowParallelLinear(attn.num_heads * dim, hidden, tp, bias_attr=None if config.o_bias else False)
        mlp.intermediate_size //= degree
        bias = None if config.mlp_bias else False
        mlp.gate_up_proj = ColumnParallelLinear(hidden, 2 * mlp.intermediate_size, tp, bias_attr=bias)
        mlp.down_proj = RowParallelLinear(mlp.intermediate_size, hidden, tp, bias_attr=bias)
    if vocab_is_split(config, tp):
        language_model.embed_tokens = VocabParallelEmbedding(config.vocab_size, hidden, tp)
        language_model.lm_head = ColumnParallelLinear(hidden, config.vocab_size // degree, tp, bias_attr=False,
                                                      gather_output=True)
    language_model.tensor_parallel = tp


def checkpoint_slices(config, inner, keys, shapes, tp):
    """Which part of which checkpoint tensor ([out, in] layout) this rank loads for the language-model
    parameter `inner`: a list of (key, axis, start, stop) to concatenate along axis 0, or None for the
    whole tensor(s) (replicated parameters). The split is `split_layout`'s, seen in the stored layout."""
    layout = split_layout(config, inner, tp) if tp is not None and tp.degree > 1 else None
    if layout is None:
        return None
    axis, sizes = layout
    if axis == 0 and not inner.startswith("embed_tokens."):  # a Linear's input rows: the stored columns
        return [(keys[0], 1, *tp.part(shapes[0][1]))]
    if len(keys) > 1:  # stored apart: q, k, v or gate, up
        parts = [(key, 0, shape[0]) for key, shape in zip(keys, shapes)]
    elif config.family == "internlm2" and ".qkv_proj." in inner:  # wqkv: a rank's whole KV groups are neighbours
        parts = [(keys[0], 0, shapes[0][0])]
    else:  # one stored tensor of the parts side by side (Phi-3's q/k/v and gate/up; a vocabulary)
        firsts = [sum(sizes[:i]) for i in range(len(sizes))]
        parts = [(keys[0], first, size) for first, size in zip(firsts, sizes)]
    slices = []
    for key, first, rows in parts:
        start, stop = tp.part(rows)
        slices.append((key, 0, first + start, first + stop))
    return slices


def local_config(config, tp):
    """The per-rank head counts, for code that regroups a rank's slice (InternLM2's wqkv)."""
    local = copy.copy(config)
    local.explicit_head_dim = config.head_dim
    local.num_attention_heads //= tp.degree
    local.num_key_value_heads //= tp.degree
    local.intermediate_size //= tp.degree
    return local


def split_layout(config, inner, tp):
    """(axis, full sizes of the parts split evenly over the ranks) of a language-model parameter in the
    model's own layout (Linear weights [in, out], LoRA's A [in, r] and B [r, out]), or None when every
    rank holds it whole."""
    module, param = inner.rsplit(".", 1)
    if module.endswith(".qkv_proj") and param != "lora_A":  # by output columns, q | k | v each
        q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
        return -1, [q, kv, kv]
    if module.endswith(".gate_up_proj") and param != "lora_A":
        return -1, [config.intermediate_size, config.intermediate_size]
    if module.endswith(".o_proj") and param in ("weight", "lora_A"):  # by input rows
        return 0, [config.num_attention_heads * config.head_dim]
    if module.endswith(".down_proj") and param in ("weight", "lora_A"):
        return 0, [config.intermediate_size]
    if module in ("embed_tokens", "lm_head") and vocab_is_split(config, tp):
        return (0 if module == "embed_tokens" else -1), [config.vocab_size]
    return None


def gather_parameter(config, inner, local, tp):
    """The whole language-model parameter `inner` (model layout) from every rank's slice `local`;
    every rank of the group calls it. Parameters that are not split come back as they are."""
    layout = split_layout(config, inner, tp) if tp is not None and tp.degree > 1 else None
    if layout is None:
        return local
    axis, sizes = layout
    slices = []
    dist.all_gather(slices, local.contiguous(), group=tp.group)
    shares = [size // tp.degree for size in sizes]
    per_rank = [paddle.split(piece, shares, axis=axis) for piece in slices]
    return paddle.concat([paddle.concat([parts[i] for parts in per_rank], axis=axis) for i in range(len(sizes))],
                         axis=axis)


def local_slice(config, inner, whole, tp):
    """This rank's slice of the whole language-model parameter `inner` (model layout), the inverse
    of `gather_parameter`; also for arrays split like that parameter (a LoRA factor)."""
    layout = split_layout(config, inner, tp) if tp is not None and tp.degree > 1 else None
    if layout is None:
        return whole
    axis, sizes = layout
    parts = paddle.split(whole, sizes, axis=axis)
    return paddle.concat([paddle.split(part, tp.degree, axis=axis)[tp.rank] for part in parts], axis=axis)
