"""Conversation -> (input_ids, labels) for supervised fine-tuning, for every chat template.

Only the assistant answers and the end-of-turn token that closes each of them are
trained; the system prompt, the user turns, the role headers, image tokens and
anything after an answer's end token (internvl2_5's "\\n") get IGNORE_INDEX. This is
what the official `preprocess_mpt` (Hermes-2), `preprocess_internlm` (internlm2-chat),
`preprocess_phi3` (phi3-chat) and `preprocess_internvl2_5` compute, but derived from
character spans instead of per-template token arithmetic:

* the prompt is rendered once with the template, recording where each answer and
  its end token start and end in the text;
* the text is tokenized exactly as chat() tokenizes a prompt (the tokenizer's BOS,
  no EOS), and an answer span [start, end) becomes token range [len(tok(text[:start])),
  len(tok(text[:end]))) after checking that both prefixes tokenize to a prefix of the
  whole text. A tokenizer that merges tokens across an answer boundary fails that
  check and the sample is refused (TokenizationMismatch) rather than trained on
  shifted labels, where the official code silently masks the whole sample.

Each image is first rendered with a single <IMG_CONTEXT> (an added token, always one
id of its own) and widened to its real token count afterwards, so tokenization cost
does not grow with the number of image tokens.
"""
import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .conversation import get_conv_template

IGNORE_INDEX = -100
IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
IMAGE_TAG = "<image>"
# Texts that would be mistaken for image tokens if they appeared in a conversation.
RESERVED_STRINGS = (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN)


class SampleError(ValueError):
    """A conversation that cannot be turned into a training sample (reason in the message)."""


class TokenizationMismatch(SampleError):
    """The tokenizer merges tokens across an answer boundary, so the answer has no exact token range."""


@dataclasses.dataclass
class Rendered:
    text: str
    answer_spans: List[Tuple[int, int]]  # [start, end) of each answer plus its end-of-turn token


def render(template_name: str, turns: Sequence[Tuple[str, str]], system_message: Optional[str] = None) -> Rendered:
    """The template's prompt text for complete (human, gpt) turns, with the answer spans.

    `turns` are ("human" | "gpt", text), alternating and starting with "human". The text
    equals `Conversation.get_prompt()` for the same messages; internlm2-chat strips each
    message, as the official preprocessing does.
    """
    conv = get_conv_template(template_name)
    if system_message is not None:
        conv.system_message = system_message
    end_token = conv.sep.rstrip()
    text = conv.system_template.format(system_message=conv.system_message) + conv.sep
    spans = []
    for index, (speaker, value) in enumerate(turns):
        expected = "human" if index % 2 == 0 else "gpt"
        if speaker != expected:
            raise SampleError(f"turn {index + 1} is from {speaker!r}, expected {expected!r} "
                              "(turns must alternate human/gpt, starting with human)")
        if template_name == "internlm2-chat":
            value = value.strip()
        if not value:
            raise SampleError(f"turn {index + 1} ({speaker}) is empty")
        text += conv.roles[0] if speaker == "human" else conv.roles[1]
        start = len(text)
        text += value + conv.sep
        if speaker == "gpt":
            spans.append((start, start + len(value) + len(end_token)))
    return Rendered(text, spans)


def image_placeholder(count: int = 1) -> str:
    return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * count + IMG_END_TOKEN


def fill_image_tags(value: str, placeholder: str) -> str:
    """Replace every <image> tag in one message with `placeholder`."""
    return value.replace(IMAGE_TAG, placeholder)


class LabelBuilder:
    """Tokenizes rendered conversations into input_ids and labels for one tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # BOS (InternLM2, Phi-3, Llama) or nothing (Qwen2): what chat() gets from tokenizer(query).
        self.prefix_ids = list(tokenizer("", add_special_tokens=True)["input_ids"])
        self.img_context_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        if tokenizer.convert_ids_to_tokens(self.img_context_id) != IMG_CONTEXT_TOKEN:
            raise ValueError(f"the tokenizer has no {IMG_CONTEXT_TOKEN} token; is it an InternVL checkpoint's?")

    def encode(self, text: str) -> List[int]:
        return self.prefix_ids + list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def build(self, rendered: Rendered, image_token_counts: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) int64 arrays; each <IMG_CONTEXT> of `rendered` becomes its image's count."""
        ids = self.encode(rendered.text)
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in rendered.answer_spans:
            first, last = self._prefix_length(rendered.text[:start], ids), self._prefix_length(
                rendered.text[:end], ids)
            labels[first:last] = ids[first:last]
        return self._widen_images(ids, labels, image_token_counts)

    def _prefix_length(self, prefix: str, ids: List[int]) -> int:
        prefix_ids = self.encode(prefix)
        if ids[:len(prefix_ids)] != prefix_ids:
            raise TokenizationMismatch(f"the tokenizer merges tokens across an answer boundary near "
                                       f"{prefix[-30:]!r}; the answer has no exact token range")
        return len(prefix_ids)

    def _widen_images(self, ids, labels, counts):
        ids, labels = np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)
        positions = np.flatnonzero(ids == self.img_context_id)
        if len(positions) != len(counts):
            raise SampleError(f"the text has {len(positions)} image placeholders but {len(counts)} images")
        if np.any(labels[positions] != IGNORE_INDEX):
            raise SampleError("an image placeholder lies inside an answer; <image> tags belong in human turns")
        repeats = np.ones(len(ids), dtype=np.int64)
        repeats[positions] = counts
        return np.repeat(ids, repeats), np.repeat(labels, repeats)
