"""Token generation on a preallocated KV cache: greedy, sampling and beam search.

Semantics are those of transformers' `generate` called, as InternVL does, with
`inputs_embeds` only, so answers equal the official model's for the same weights:

* the returned ids are the new tokens; a row that finished early is padded with
  `pad_token_id` (the first eos when unset);
* the repetition penalty sees only generated tokens (the prompt is embeddings);
* sampling applies repetition penalty, temperature, top-k, then top-p;
* beam search keeps `2 * num_beams` candidates per step (more with several eos
  ids) scored by summed log-probabilities, and ranks finished hypotheses by
  `score / generated_length ** length_penalty`, with `early_stopping` False,
  True or "never";
* defaults are transformers' `GenerationConfig` defaults, which are also the
  values in the InternVL2 checkpoints' `llm_config`.

The prompt is run once; each step feeds one token per row. Beam search moves the
cache rows along with the beams they belong to.
"""
from dataclasses import dataclass, fields
from typing import List, Optional, Union

import numpy as np
import paddle
import paddle.nn.functional as F

from .llm import KVCache

# transformers' "minus infinity" for beam scores: finite, so sums stay comparable.
_NEG = -1.0e9


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
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    eos_token_id: Optional[Union[int, List[int]]] = None
    pad_token_id: Optional[int] = None
    seed: Optional[int] = None

    @classmethod
    def from_kwargs(cls, **kwargs):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise GenerationError(f"unknown generation settings {unknown}; supported: {sorted(known | {'streamer'})}")
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
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise GenerationError(f"num_beams must be a positive integer, got {self.num_beams!r}")
        if self.early_stopping not in (True, False, "never"):
            raise GenerationError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")

    @property
    def eos_ids(self):
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else [int(i) for i in self.eos_token_id]


def apply_repetition_penalty(scores, generated, penalty):
    """transformers' rule: divide positive scores, multiply negative ones, for every token already produced."""
    if penalty == 1.0 or generated is None:
        return scores
    seen = paddle.take_along_axis(scores, generated, axis=1)
    seen = paddle.where(seen < 0, seen * penalty, seen / penalty)
    return paddle.put_along_axis(scores, generated, seen, axis=1)


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
    logits = apply_repetition_penalty(logits, generated, config.repetition_penalty)
    if not config.do_sample:
        return paddle.argmax(logits, axis=-1)
    probs = F.softmax(warp_for_sampling(logits, config), axis=-1)
    return paddle.multinomial(probs, num_samples=1).squeeze(-1)


class _Decoder:
    """The LLM on a KV cache sized for prompt + new tokens: one prefill, then one token per row per step."""

    def __init__(self, language_model, inputs_embeds, attention_mask, max_new_tokens):
        batch, prompt_len, _ = inputs_embeds.shape
        self.language_model = language_model
        self.cache = KVCache(language_model.config, batch, prompt_len + max_new_tokens, inputs_embeds.dtype,
                             kv_heads=language_model.layers[0].self_attn.num_kv_heads)
        self.attention_mask = attention_mask
        # Left padding: positions count real tokens only, as transformers derives them from the mask.
        positions = attention_mask.cumsum(axis=-1) - 1
        position_ids = paddle.where(attention_mask.astype("bool"), positions, paddle.ones_like(positions))
        self.next_position = position_ids[:, -1:] + 1
        self.logits = self._last_logits(inputs_embeds, position_ids)

    def _last_logits(self, embeds, position_ids):
        logits = self.language_model(embeds, self.attention_mask, position_ids, self.cache, last_logits_only=True)
        return logits[:, -1].astype("float32")

    def step(self, tokens):
        """Feed tokens [rows]; `self.logits` becomes the next-token logits [rows, vocab]."""
        ones = paddle.ones([tokens.shape[0], 1], dtype="int64")
        self.attention_mask = paddle.concat([self.attention_mask, ones], axis=1)
        embeds = self.language_model.embed_tokens(tokens.unsqueeze(1))
        self.logits = self._last_logits(embeds, self.next_position)
        self.next_position = self.next_position + 1

    def expand(self, beams):
        """Give every prompt `beams` rows after the prefill, so the prompt is run once, not once per beam."""
        rows = paddle.repeat_interleave(paddle.arange(self.logits.shape[0]), beams)
        self.cache.reorder(rows)
        self.logits = paddle.gather(self.logits, rows)
        self.attention_mask = paddle.gather(self.attention_mask, rows)
        self.next_position = paddle.gather(self.next_position, rows)

    def reorder(self, rows):
        """Beams moved between rows of the same prompt, whose mask and positions are equal: only the cache moves."""
        self.cache.reorder(rows)


def _check_streamer(streamer, config, batch):
    if streamer is None:
        return
    if config.num_beams > 1:
        raise GenerationError("a streamer cannot follow beam search (it streams one answer); use num_beams=1")
    # A streamer that sets `follows_batches` takes each step's [batch] tokens (the server's does).
    if batch != 1 and not getattr(streamer, "follows_batches", False):
        raise GenerationError(f"a streamer follows one answer, but {batch} prompts were given")


@paddle.no_grad()
def generate(language_model, inputs_embeds, attention_mask=None, streamer=None, **settings):
    """New token ids [B, n] for prompts given as embeddings [B, T, C] (left-padded when batched).

    `streamer` (see streaming.py) receives the empty prompt ids, then each new token, then `end()`;
    an exception it raises ends generation there (the server's streamer stops finished batches so).
    """
    config = GenerationConfig.from_kwargs(**settings)
    batch, prompt_len, _ = inputs_embeds.shape
    _check_streamer(streamer, config, batch)
    if config.seed is not None:
        paddle.seed(config.seed)
    if attention_mask is None:
        attention_mask = paddle.ones([batch, prompt_len], dtype="int64")
    attention_mask = attention_mask.astype("int64")
    if streamer is not None:
        streamer.put(np.zeros([batch, 0], dtype=np.int64))
    if config.max_new_tokens == 0:
        tokens = paddle.zeros([batch, 0], dtype="int64")
    else:
        decoder = _Decoder(language_model, inputs_embeds, attention_mask, config.max_new_tokens)
        if config.num_beams > 1:
            decoder.expand(config.num_beams)
            tokens = _beam_search(decoder, config)
        else:
            tokens = _greedy_or_sample(decoder, config, streamer)
    if streamer is not None:
        streamer.end()
    return tokens


def _pad_id(config):
    eos_ids = config.eos_ids
    return config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)


def _greedy_or_sample(decoder, config, streamer):
    batch = decoder.logits.shape[0]
    eos = paddle.to_tensor(config.eos_ids, dtype="int64") if config.eos_ids else None
    pad = paddle.full([batch], _pad_id(config), dtype="int64")
    finished = paddle.zeros([batch], dtype="bool")
    generated = None
    for step in range(config.max_new_tokens):
        tokens = select_next_tokens(decoder.logits, generated, config)
        tokens = paddle.where(finished, pad, tokens)
        generated = tokens.unsqueeze(1) if generated is None else paddle.concat([generated, tokens.unsqueeze(1)], 1)
        if streamer is not None:
            streamer.put(tokens.numpy())
        if eos is not None:
            finished = finished | paddle.isin(tokens, eos)
            if bool(finished.all()):
                break
        if step + 1 < config.max_new_tokens:
            decoder.step(tokens)
    return generated


def _log_softmax(logits):
    """log_softmax over the vocabulary, spelled out: Paddle's CPU kernel takes seconds on a 150k vocabulary."""
    shifted = logits - logits.max(axis=-1, keepdim=True)
    return shifted - paddle.log(paddle.exp(shifted).sum(axis=-1, keepdim=True))


def _gather_beams(values, index):
    """values [B, K, ...] picked along K by index [B, N]."""
    while index.ndim < values.ndim:
        index = index.unsqueeze(-1)
    if values.dtype == paddle.bool:  # no bool kernel
        return paddle.take_along_axis(values.astype("int32"), index, axis=1, broadcast=True).astype("bool")
    return paddle.take_along_axis(values, index, axis=1, broadcast=True)


class _Hypotheses:
    """The best `beams` finished sequences of each prompt so far, padded to max_new_tokens with `fill`.

    Empty slots score _NEG; like transformers, a candidate that did not finish may fill a slot with a
    score near _NEG (marked unfinished), and is displaced by any real hypothesis.
    """

    def __init__(self, batch, beams, max_new, fill):
        self.beams, self.max_new, self.fill = beams, max_new, fill
        self.tokens = paddle.full([batch, beams, max_new], fill, dtype="int64")
        self.scores = paddle.full([batch, beams], _NEG, dtype="float32")
        self.lengths = paddle.zeros([batch, beams], dtype="int64")
        self.finished = paddle.zeros([batch, beams], dtype="bool")

    def add(self, candidates, scores, finished):
        """Merge candidates [B, K, length] with their final scores [B, K]; keep the best `beams` per prompt."""
        batch, count, length = candidates.shape
        padding = paddle.full([batch, count, self.max_new - length], self.fill, dtype="int64")
        candidates = paddle.concat([candidates, padding], axis=-1)
        best = paddle.topk(paddle.concat([self.scores, scores], axis=1), self.beams)[1]
        self.tokens = _gather_beams(paddle.concat([self.tokens, candidates], axis=1), best)
        self.scores = _gather_beams(paddle.concat([self.scores, scores], axis=1), best)
        lengths = paddle.full([batch, count], length, dtype="int64")
        self.lengths = _gather_beams(paddle.concat([self.lengths, lengths], axis=1), best)
        self.finished = _gather_beams(paddle.concat([self.finished, finished], axis=1), best)

    def worst_scores(self):
        """Per slot: the worst kept score once that slot holds a finished hypothesis, else _NEG."""
        worst = self.scores.min(axis=1, keepdim=True).expand_as(self.scores)
        return paddle.where(self.finished, worst, paddle.full_like(self.scores, _NEG))

    def best(self):
        return self.tokens[:, 0, :int(self.lengths[:, 0].max())]


def _beam_search(decoder, config):
    """transformers' beam search; returns the best finished hypothesis of each prompt, padded to the longest."""
    rows, vocab = decoder.logits.shape
    beams, max_new, penalty = config.num_beams, config.max_new_tokens, config.length_penalty
    batch = rows // beams
    eos = paddle.to_tensor(config.eos_ids, dtype="int64") if config.eos_ids else None
    # Enough candidates that `beams` of them are still running even if others hit an eos.
    keep = max(2, 1 + len(config.eos_ids)) * beams
    may_finish = (paddle.arange(keep) < beams).unsqueeze(0)  # only the best `beams` candidates can finish
    hypotheses = _Hypotheses(batch, beams, max_new, _pad_id(config))
    running = paddle.zeros([batch, beams, 0], dtype="int64")
    # Only the first beam is live at the start, so the first step does not pick one token `beams` times.
    running_scores = paddle.to_tensor([[0.0] + [_NEG] * (beams - 1)] * batch, dtype="float32")
    improvable = paddle.ones([batch, 1], dtype="bool")
    for step in range(max_new):
        length = step + 1
        log_probs = _log_softmax(decoder.logits)
        history = running.reshape([rows, step]) if step else None
        log_probs = apply_repetition_penalty(log_probs, history, config.repetition_penalty)
        if config.do_sample:
            log_probs = warp_for_sampling(log_probs, config)
        totals = (log_probs.reshape([batch, beams, vocab]) + running_scores.unsqueeze(-1)).reshape([batch, -1])
        if config.do_sample:
            picked = paddle.multinomial(F.softmax(totals, axis=-1), keep, replacement=False)
            top_scores = paddle.take_along_axis(totals, picked, axis=1)
        else:
            top_scores, picked = paddle.topk(totals, keep)
        parents, tokens = picked // vocab, picked % vocab
        candidates = tokens.unsqueeze(-1)
        if step:
            candidates = paddle.concat([_gather_beams(running, parents), candidates], axis=-1)
        hits = paddle.full(tokens.shape, length == max_new, dtype="bool")
        if eos is not None:
            hits = hits | paddle.isin(tokens, eos)

        # Continue with the best candidates that did not just finish.
        alive_scores = top_scores + hits.astype("float32") * _NEG
        order = paddle.topk(alive_scores, beams)[1]
        running, running_scores = _gather_beams(candidates, order), _gather_beams(alive_scores, order)
        beam_rows = _gather_beams(parents, order) + paddle.arange(batch).unsqueeze(1) * beams

        # Offer the finished ones, length-normalised, to the kept hypotheses.
        finished_now = hits & may_finish
        scores = top_scores / float(length) ** penalty
        if config.early_stopping is True:
            scores = scores + hypotheses.finished.all(axis=-1, keepdim=True).astype("float32") * _NEG
        scores = scores + (~improvable).astype("float32") * _NEG
        scores = scores + (~finished_now).astype("float32") * _NEG
        hypotheses.add(candidates, scores, finished_now)

        # Stop when no running beam can beat the worst kept hypothesis (transformers' heuristic).
        hoped_length = max_new if config.early_stopping == "never" and penalty > 0 else length
        best_hope = running_scores[:, :1] / float(hoped_length) ** penalty
        improvable = improvable & (best_hope > hypotheses.worst_scores()).any(axis=-1, keepdim=True)
        all_full = config.early_stopping is True and bool(hypotheses.finished.all())
        if not bool(improvable.any()) or all_full or bool(hits.all()):
            break
        decoder.reorder(beam_rows.reshape([-1]))
        decoder.step(running[:, :, -1].reshape([-1]))
    return hypotheses.best()
