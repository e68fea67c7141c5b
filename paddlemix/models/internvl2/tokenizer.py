"""Tokenizers for the language models inside InternVL checkpoints.

The family comes from `config.json` (`llm_config.architectures[0]`), never from
the directory name. BPE vocabularies (Qwen2, Llama-3 `tokenizer.json`) load
through paddleformers, whose tokenizers are HF's own. SentencePiece models
(InternLM2, Phi-3, Yi) get `SentencePieceTokenizer` here: the official code
loads them as *slow* HF tokenizers under transformers 4.37, which newer HF
releases (and so paddleformers) replaced by converted BPE models that tokenize
some inputs differently (e.g. runs of spaces).
"""
import dataclasses
import json
import logging
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import sentencepiece as spm

logger = logging.getLogger(__name__)

SPIECE_UNDERLINE = "▁"
_SP_MODEL_FILE = "tokenizer.model"
_BPE_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
_BPE_ARCHITECTURES = ("Qwen2ForCausalLM",)
_SP_ARCHITECTURES = ("InternLM2ForCausalLM", "Phi3ForCausalLM")
# Llama checkpoints carry either a sentencepiece model (Yi) or a tokenizer.json (Llama-3).
_EITHER_ARCHITECTURES = ("LlamaForCausalLM",)
SUPPORTED_ARCHITECTURES = _BPE_ARCHITECTURES + _SP_ARCHITECTURES + _EITHER_ARCHITECTURES


class TokenizerFilesError(FileNotFoundError):
    """A checkpoint directory without the files its tokenizer needs."""


@dataclasses.dataclass(frozen=True)
class AddedToken:
    """A token matched verbatim in the text before sentencepiece sees it (HF's AddedToken)."""

    content: str
    # Strip whitespace on that side of the token while splitting, as HF does.
    lstrip: bool = False
    rstrip: bool = False


_CLEANUP_REPLACEMENTS = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
    (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)


def clean_up_tokenization(text: str) -> str:
    """HF's English detokenization cleanup (removes spaces before punctuation)."""
    for before, after in _CLEANUP_REPLACEMENTS:
        text = text.replace(before, after)
    return text


class SentencePieceTokenizer:
    """HF's slow `LlamaTokenizer` (transformers 4.37) on a sentencepiece model.

    Added tokens are split out of the text first; each remaining chunk goes
    through sentencepiece. `legacy=False` is HF's non-legacy mode: one prefix
    space for the whole text instead of sentencepiece's own per chunk.
    """

    def __init__(
        self,
        model_file: str,
        added_tokens: Optional[Dict[int, AddedToken]] = None,
        bos_token: Optional[str] = "<s>",
        eos_token: Optional[str] = "</s>",
        unk_token: Optional[str] = "<unk>",
        pad_token: Optional[str] = None,
        additional_special_tokens: Sequence[str] = (),
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        legacy: bool = True,
        clean_up_tokenization_spaces: bool = False,
        padding_side: str = "right",
    ):
        self.legacy = legacy
        self.sp_model = _load_sentencepiece(model_file, keep_dummy_prefix=legacy)
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = bos_token, eos_token, unk_token, pad_token
        self.additional_special_tokens = list(additional_special_tokens)
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.padding_side = padding_side

        self._added: Dict[int, AddedToken] = dict(added_tokens or {})
        # HF registers every special token as an added token, so they are split out too.
        known = {token.content for token in self._added.values()}
        for token in self.all_special_tokens:
            if token not in known:
                self._added[self._sp_piece_id(token)] = AddedToken(token)
        self._added_ids = {token.content: index for index, token in self._added.items()}
        alternatives = "|".join(re.escape(text) for text in sorted(self._added_ids, key=len, reverse=True))
        self._split_pattern = re.compile(f"({alternatives})") if alternatives else None
        self._special_token_set = set(self.all_special_tokens)
        self.all_special_ids = [self._added_ids[token] for token in self.all_special_tokens]
        self._special_id_set = set(self.all_special_ids)
        # HF 4.37 decodes these on their own and joins them with spaces: added tokens
        # that are not special tokens, and special ones beyond the sentencepiece vocab.
        self._standalone_tokens = (set(self._added_ids) - self._special_token_set) | {
            token for token in self.additional_special_tokens if self._added_ids[token] >= self.vocab_size
        }
        self._unk_token_length = len(self.sp_model.encode(str(unk_token)))

    # ---- vocabulary -------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Size of the sentencepiece vocabulary alone, as HF reports it."""
        return self.sp_model.get_piece_size()

    def __len__(self) -> int:
        return max(self.vocab_size, max(self._added, default=-1) + 1)

    @property
    def all_special_tokens(self) -> List[str]:
        tokens = [self.bos_token, self.eos_token, self.unk_token, self.pad_token, *self.additional_special_tokens]
        return list(dict.fromkeys(token for token in tokens if token is not None))

    @property
    def bos_token_id(self) -> Optional[int]:
        return self.convert_tokens_to_ids(self.bos_token) if self.bos_token is not None else None

    @property
    def eos_token_id(self) -> Optional[int]:
        return self.convert_tokens_to_ids(self.eos_token) if self.eos_token is not None else None

    @property
    def unk_token_id(self) -> Optional[int]:
        return self.convert_tokens_to_ids(self.unk_token) if self.unk_token is not None else None

    @property
    def pad_token_id(self) -> Optional[int]:
        return self.convert_tokens_to_ids(self.pad_token) if self.pad_token is not None else None

    def _sp_piece_id(self, piece: str) -> int:
        index = self.sp_model.piece_to_id(piece)
        if self.sp_model.id_to_piece(index) != piece:
            raise ValueError(f"special token {piece!r} is neither an added token nor in the sentencepiece vocabulary")
        return index

    def convert_tokens_to_ids(self, tokens: Union[str, Iterable[str]]) -> Union[int, List[int]]:
        if isinstance(tokens, str):
            return self._added_ids[tokens] if tokens in self._added_ids else self.sp_model.piece_to_id(tokens)
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: Union[int, Iterable[int]]) -> Union[str, List[str]]:
        if isinstance(ids, (int, np.integer)):
            index = int(ids)
            return self._added[index].content if index in self._added else self.sp_model.id_to_piece(index)
        return [self.convert_ids_to_tokens(index) for index in ids]

    # ---- encoding ---------------------------------------------------------------

    def tokenize(self, text: str) -> List[str]:
        """Text to tokens: added tokens verbatim, the chunks between them via sentencepiece."""
        if not self.legacy and text:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        tokens = []
        for chunk, is_added in self._split(text):
            if is_added:
                tokens.append(chunk)
            elif chunk:
                tokens.extend(self._tokenize_chunk(chunk))
        # Non-legacy: no prefix space when the text starts with a special token.
        if not self.legacy and tokens[:1] == [SPIECE_UNDERLINE] and set(tokens[1:2]) & self._special_token_set:
            tokens = tokens[1:]
        return tokens

    def _split(self, text: str):
        """(chunk, is_added_token) pairs, honouring each added token's lstrip/rstrip."""
        parts = self._split_pattern.split(text) if self._split_pattern else [text]
        for i in range(1, len(parts), 2):
            token = self._added[self._added_ids[parts[i]]]
            if token.lstrip:
                parts[i - 1] = parts[i - 1].rstrip()
            if token.rstrip:
                parts[i + 1] = parts[i + 1].lstrip()
        return [(part, i % 2 == 1) for i, part in enumerate(parts)]

    def _tokenize_chunk(self, text: str) -> List[str]:
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return self.sp_model.encode(text, out_type=str)
        # Without a dummy prefix sentencepiece drops a leading "▁"; HF keeps it by
        # encoding behind the unk token and cutting that off again.
        pieces = self.sp_model.encode(self.unk_token + text, out_type=str)
        return pieces[self._unk_token_length:] if len(pieces) >= self._unk_token_length else pieces

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        if add_special_tokens:
            ids = [self.bos_token_id] * self.add_bos_token + ids + [self.eos_token_id] * self.add_eos_token
        return ids

    def __call__(
        self,
        text: Union[str, Sequence[str]],
        add_special_tokens: bool = True,
        padding: Union[bool, str] = False,
        return_tensors: Optional[str] = None,
        return_attention_mask: bool = True,
    ) -> Dict[str, object]:
        """Encode one text or a batch; `padding=True` pads to the longest on `padding_side`.

        `return_tensors` is None (lists), "np" (int64 arrays) or "pd" (paddle tensors).
        """
        batched = not isinstance(text, str)
        all_ids = [self.encode(item, add_special_tokens) for item in (text if batched else [text])]
        masks = [[1] * len(ids) for ids in all_ids]
        if padding not in (False, "do_not_pad"):
            if padding not in (True, "longest"):
                raise ValueError(f"padding={padding!r} is not supported; use True/'longest' or False")
            all_ids, masks = self._pad(all_ids, masks)
        encoded = {"input_ids": all_ids}
        if return_attention_mask:
            encoded["attention_mask"] = masks
        if return_tensors is not None:
            return {key: _to_tensor(value, return_tensors) for key, value in encoded.items()}
        return encoded if batched else {key: value[0] for key, value in encoded.items()}

    def _pad(self, all_ids, masks):
        if self.pad_token_id is None:
            raise ValueError("this tokenizer has no pad token, so it cannot pad a batch")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {self.padding_side!r}")
        longest = max(len(ids) for ids in all_ids)
        padded_ids, padded_masks = [], []
        for ids, mask in zip(all_ids, masks):
            fill = longest - len(ids)
            if self.padding_side == "left":
                padded_ids.append([self.pad_token_id] * fill + ids)
                padded_masks.append([0] * fill + mask)
            else:
                padded_ids.append(ids + [self.pad_token_id] * fill)
                padded_masks.append(mask + [0] * fill)
        return padded_ids, padded_masks

    # ---- decoding ---------------------------------------------------------------

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Ids to text, as HF 4.37's slow `decode` (special tokens spaced as it does)."""
        ids = [int(index) for index in _as_list(ids)]
        if skip_special_tokens:
            ids = [index for index in ids if index not in self._special_id_set]
        pieces, run = [], []
        for token in self.convert_ids_to_tokens(ids):
            if token not in self._standalone_tokens:
                run.append(token)
                continue
            if run:
                text = self._tokens_to_string(run)
                if text:
                    pieces.append(text)
                run = []
            pieces.append(token)
        if run:
            pieces.append(self._tokens_to_string(run))
        text = " ".join(pieces)
        return clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def batch_decode(self, sequences, skip_special_tokens: bool = False) -> List[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in _as_list(sequences)]

    def _tokens_to_string(self, tokens: List[str]) -> str:
        """HF LlamaTokenizer.convert_tokens_to_string: drops the prefix space it added."""
        if tokens[0].startswith(SPIECE_UNDERLINE):
            tokens = [tokens[0][1:], *tokens[1:]]
        text, run, previous_special = "", [], False
        for i, token in enumerate(tokens):
            if token in self._special_token_set:
                if not previous_special and i != 0 and self.legacy:
                    text += " "
                text += self.sp_model.decode(run) + token
                run, previous_special = [], True
            else:
                run.append(token)
                previous_special = False
        return text + self.sp_model.decode(run)


class InternLM2Tokenizer(SentencePieceTokenizer):
    """The official `InternLM2Tokenizer`: sentencepiece per chunk, with its own decode.

    Its model has no dummy prefix, so encoding is the legacy Llama path. Decoding
    differs: a space goes before the text that precedes a special token, and HF's
    punctuation cleanup always runs (so " ." decodes as ".").
    """

    def __init__(self, model_file: str, **kwargs):
        kwargs["legacy"] = True
        kwargs.setdefault("pad_token", "</s>")
        super().__init__(model_file, **kwargs)

    def _tokens_to_string(self, tokens: List[str]) -> str:
        text, run, previous_special = "", [], False
        for token in tokens:
            if token in self._special_token_set:
                if not previous_special:
                    text += " "
                text += self.sp_model.decode(run) + token
                run, previous_special = [], True
            else:
                run.append(token)
                previous_special = False
        # The official prefix-space step adds one space and then drops the first
        # character again, which leaves the string as it is.
        return clean_up_tokenization(text + self.sp_model.decode(run))


def _load_sentencepiece(model_file: str, keep_dummy_prefix: bool) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor()
    processor.Load(model_file)
    if keep_dummy_prefix:
        return processor
    # HF's non-legacy mode turns sentencepiece's own prefix space off.
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString(processor.serialized_model_proto())
    proto.normalizer_spec.add_dummy_prefix = False
    processor.LoadFromSerializedProto(proto.SerializeToString())
    return processor


def _as_list(values):
    """Lists, numpy arrays, paddle tensors or a single id, as a (nested) list."""
    if isinstance(values, (int, np.integer)):
        return [int(values)]
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _to_tensor(rows: List[List[int]], return_tensors: str):
    if len({len(row) for row in rows}) > 1:
        raise ValueError("sequences have different lengths; pass padding=True to return tensors")
    array = np.asarray(rows, dtype=np.int64)
    if return_tensors == "np":
        return array
    if return_tensors == "pd":
        import paddle

        return paddle.to_tensor(array)
    raise ValueError(f"return_tensors must be None, 'np' or 'pd', not {return_tensors!r}")


# ---- loading --------------------------------------------------------------------


def load_tokenizer(path: Union[str, os.PathLike]):
    """The tokenizer of the InternVL checkpoint in directory `path`.

    `path` must be a local directory (hub ids are resolved to one by the caller);
    the language-model family is read from its config.json.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise NotADirectoryError(f"'{path}' is not a directory; load_tokenizer needs a local checkpoint directory")
    architecture = llm_architecture(path)
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"no tokenizer for language model {architecture!r} in {path}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    has_sp_model = os.path.isfile(os.path.join(path, _SP_MODEL_FILE))
    if architecture in _SP_ARCHITECTURES or (architecture in _EITHER_ARCHITECTURES and has_sp_model):
        if not has_sp_model:
            raise TokenizerFilesError(f"{path} has no {_SP_MODEL_FILE}, which the {architecture} tokenizer needs")
        cls = InternLM2Tokenizer if architecture == "InternLM2ForCausalLM" else SentencePieceTokenizer
        logger.info("Loading %s for %s from %s", cls.__name__, architecture, path)
        return _load_sentencepiece_tokenizer(cls, path)
    if not any(all(os.path.isfile(os.path.join(path, name)) for name in files) for files in _BPE_FILE_SETS):
        expected = " or ".join(" + ".join(files) for files in _BPE_FILE_SETS)
        raise TokenizerFilesError(f"{path} has no tokenizer files for {architecture}: expected {expected}")
    from paddleformers.transformers import AutoTokenizer

    logger.info("Loading the paddleformers tokenizer for %s from %s", architecture, path)
    return AutoTokenizer.from_pretrained(path)


def llm_architecture(path: str) -> str:
    """`llm_config.architectures[0]` of the checkpoint's config.json."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise TokenizerFilesError(f"{path} has no config.json, which names the language model")
    with open(config_file, encoding="utf-8") as handle:
        config = json.load(handle)
    try:
        return config["llm_config"]["architectures"][0]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"{config_file} has no llm_config.architectures; is it an InternVL checkpoint?") from None


def _load_sentencepiece_tokenizer(cls, path: str) -> SentencePieceTokenizer:
    """Build `cls` from the JSON files the way HF 4.37's from_pretrained reads them.

    A tokenizer_config.json with `added_tokens_decoder` is the whole truth; older
    checkpoints instead list added tokens in added_tokens.json and special tokens
    in special_tokens_map.json, which then overrides tokenizer_config.json.
    """
    config = _read_json(path, "tokenizer_config.json")
    legacy_files = "added_tokens_decoder" not in config
    if legacy_files:
        config.update(_read_json(path, "special_tokens_map.json"))
    kwargs = {name: _token_content(config[name]) for name in _SPECIAL_TOKEN_NAMES if name in config}
    kwargs["additional_special_tokens"] = [_token_content(t) for t in config.get("additional_special_tokens", [])]
    for name in ("add_bos_token", "add_eos_token", "clean_up_tokenization_spaces", "padding_side"):
        if name in config:
            kwargs[name] = config[name]
    # HF treats a missing `legacy` as legacy (with a warning).
    kwargs["legacy"] = config.get("legacy") is not False
    if legacy_files:
        added = {int(index): AddedToken(content) for content, index in _read_json(path, "added_tokens.json").items()}
    else:
        added = {
            int(index): AddedToken(spec["content"], lstrip=spec.get("lstrip", False), rstrip=spec.get("rstrip", False))
            for index, spec in config["added_tokens_decoder"].items()
        }
    return cls(os.path.join(path, _SP_MODEL_FILE), added_tokens=added, **kwargs)


_SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_content(token):
    """A special token given as a string or as a serialized AddedToken dict."""
    return token["content"] if isinstance(token, dict) else token


def _read_json(path: str, name: str) -> dict:
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        return {}
    with open(file, encoding="utf-8") as handle:
        return json.load(handle)
