"""Token generation with a preallocated KV cache.

Semantics follow transformers' `generate` when called, as InternVL does, with
`inputs_embeds` only: the returned ids are the new tokens, the repetition
penalty sees only generated tokens, finished rows are padded with `pad_token_id`
(the first eos when unset), and sampling applies temperature, top-k, then top-p.
"""
from dataclasses import dataclass, fields
from typing import List, Optional, Union

import paddle
import paddle.nn.functional as F

from .llm import KVCache


class GenerationError(ValueError):
    """Generation settings the model cannot honour."""


@dataclass
class GenerationConfig:
    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_beams: int = 1
    eos_token_id: Optional[Union[int, List[int]]] = None
    pad_token_id: Optional[int] = None
    seed: Optional[int] = None

    @classmethod
    def from_kwargs(cls, **kwargs):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise GenerationError(f"unknown generation settings {unknown}; supported: {sorted(known)}")
        config = cls(**{k: v for k, v in kwargs.items() if v is not None or k in ("eos_token_id", "pad_token_id")})
        config.validate()
        return config

    def validate(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise GenerationError(f"max_new_tokens must be a non-negative integer, got {self.max_new_tokens!r}")
        if self.do_sample and not self.temperature > 0:
            raise GenerationError(f"temperature must be > 0 when sampling, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0, got {self.top_k!r}")
        if not self.repetition_penalty > 0:
            raise GenerationError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if self.num_beams != 1:
            raise GenerationError("beam search (num_beams > 1) is not implemented yet; use num_beams=1")

    @property
    def eos_ids(self):
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)


def apply_repetition_penalty(logits, generated, penalty):
    """transformers' rule: divide positive scores, multiply negative ones, for every token already produced."""
    if penalty == 1.0 or generated is None:
        return logits
    seen = paddle.take_along_axis(logits, generated, axis=1)
    seen = paddle.where(seen < 0, seen * penalty, seen / penalty)
    return paddle.put_along_axis(logits, generated, seen, axis=1)


def warp_for_sampling(logits, config):
    """Temperature, then top-k, then top-p (nucleus), as transformers orders its warpers."""
    logits = logits / config.temperature if config.temperature != 1.0 else logits
    neg_inf = paddle.full([], float("-inf"), logits.dtype)
    if config.top_k and config.top_k < logits.shape[-1]:
        kth = paddle.topk(logits, config.top_k, axis=-1)[0][:, -1:]
        logits = paddle.where(logits < kth, neg_inf, logits)
    if config.top_p < 1.0:
        sorted_idx = paddle.argsort(logits, axis=-1)
        sorted_logits = paddle.take_along_axis(logits, sorted_idx, axis=1)
        cumulative = F.softmax(sorted_logits, axis=-1).cumsum(axis=-1)
        remove_sorted = cumulative <= (1 - config.top_p)
        remove_sorted[:, -1] = False  # always keep the most likely token
        kept_sorted = paddle.where(remove_sorted, neg_inf, sorted_logits)
        # sorted_idx is a permutation, so scattering back rewrites every position.
        logits = paddle.put_along_axis(logits, sorted_idx, kept_sorted, axis=1)
    return logits


def select_next_tokens(logits, generated, config):
    logits = apply_repetition_penalty(logits.astype("float32"), generated, config.repetition_penalty)
    if not config.do_sample:
        return paddle.argmax(logits, axis=-1)
    probs = F.softmax(warp_for_sampling(logits, config), axis=-1)
    return paddle.multinomial(probs, num_samples=1).squeeze(-1)


@paddle.no_grad()
def generate(language_model, inputs_embeds, attention_mask=None, **settings):
    """New token ids [B, n] for prompts given as embeddings [B, T, C] (left-padded when batched)."""
    config = GenerationConfig.from_kwargs(**settings)
    if config.seed is not None:
        paddle.seed(config.seed)
    batch, prompt_len, _ = inputs_embeds.shape
    if attention_mask is None:
        attention_mask = paddle.ones([batch, prompt_len], dtype="int64")
    attention_mask = attention_mask.astype("int64")
    eos_ids = config.eos_ids
    pad_id = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    if config.max_new_tokens == 0:
        return paddle.zeros([batch, 0], dtype="int64")

    cache = KVCache(language_model.config, batch, prompt_len + config.max_new_tokens, inputs_embeds.dtype)
    positions = attention_mask.cumsum(axis=-1) - 1
    position_ids = paddle.where(attention_mask.astype("bool"), positions, paddle.ones_like(positions))
    next_position = position_ids[:, -1:] + 1
    eos = paddle.to_tensor(eos_ids, dtype="int64") if eos_ids else None
    finished = paddle.zeros([batch], dtype="bool")
    generated = None
    logits = language_model(inputs_embeds, attention_mask, position_ids, cache, last_logits_only=True)
    for step in range(config.max_new_tokens):
        tokens = select_next_tokens(logits[:, -1], generated, config)
        tokens = paddle.where(finished, paddle.full_like(tokens, pad_id), tokens)
        generated = tokens.unsqueeze(1) if generated is None else paddle.concat([generated, tokens.unsqueeze(1)], 1)
        if eos is not None:
            finished = finished | (tokens.unsqueeze(1) == eos.unsqueeze(0)).any(axis=1)
            if bool(finished.all()):
                break
        if step + 1 == config.max_new_tokens:
            break
        attention_mask = paddle.concat([attention_mask, paddle.ones([batch, 1], dtype="int64")], axis=1)
        embeds = language_model.embed_tokens(tokens.unsqueeze(1))
        logits = language_model(embeds, attention_mask, next_position, cache, last_logits_only=True)
        next_position = next_position + 1
    return generated
