"""Supervised fine-tuning data: the official meta/JSONL layout -> padded batches.

A meta file names the datasets::

    {"my_data": {"root": "playground/data/my_data/", "annotation": "playground/opensource/my_data.jsonl",
                 "data_augment": false, "repeat_time": 1, "length": 1000, "max_dynamic_patch": 6}}

Each annotation line is one conversation with an "image" (path or list of paths under
root), a "video" (path), or neither (text only)::

    {"image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\\nWhat is it?"},
                                         {"from": "gpt", "value": "A red panda."}]}

Bad samples follow one documented policy (`bad_sample_policy`):
  * "skip" (default): the sample is dropped and counted, and a warning names the
    annotation file and line and the reason. Lines that are malformed (invalid JSON,
    missing/empty/misordered conversations, wrong <image> tags) are dropped while the
    dataset is built, with a summary. Problems that only show when a sample is loaded
    (missing or unreadable image/video, longer than max_seq_length with its image
    tokens, a tokenizer that merges tokens across an answer boundary) drop that sample
    and serve the next one in its place, so batches stay full and a resumed run sees
    the same data.
  * "error": the first bad sample stops training with "<file>:<line>: <reason>".
Samples are never truncated: a cut could drop image tokens or the answer itself.
"""
import collections
import dataclasses
import io
import json
import logging
import os
from typing import Dict, List, Optional

import numpy as np
import paddle
from PIL import Image

from .processing import ImageLoadError, VideoLoadError, dynamic_preprocess, open_image, read_video_frames
from .train_labels import (IGNORE_INDEX, IMAGE_TAG, RESERVED_STRINGS, LabelBuilder, SampleError, fill_image_tags,
                           image_placeholder, render)

logger = logging.getLogger(__name__)

NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.4814546, 0.4578275, 0.40821073), (0.2686295, 0.2613025, 0.2757711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
VIDEO_TAG = "<video>"
POLICIES = ("skip", "error")
# Consecutive load-time failures after which "skip" gives up: the data is broken, not a sample.
MAX_CONSECUTIVE_SKIPS = 50
# How many example locations a skip summary lists.
SUMMARY_EXAMPLES = 5


class DataError(ValueError):
    """A bad sample under bad_sample_policy="error", or a meta file that cannot be used."""


@dataclasses.dataclass
class DataConfig:
    template: str
    num_image_token: int
    image_size: int = 448
    dynamic_image_size: bool = True
    use_thumbnail: bool = True
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 6
    max_seq_length: int = 4096
    normalize_type: str = "imagenet"
    video_frames: int = 8
    bad_sample_policy: str = "skip"
    seed: int = 0

    def __post_init__(self):
        if self.normalize_type not in NORMALIZATION:
            raise ValueError(f"normalize_type must be one of {', '.join(NORMALIZATION)}, not {self.normalize_type!r}")
        if self.bad_sample_policy not in POLICIES:
            raise ValueError(f"bad_sample_policy must be one of {', '.join(POLICIES)}, not {self.bad_sample_policy!r}")


@dataclasses.dataclass
class Source:
    """One entry of the meta file."""

    name: str
    root: str
    annotation: str
    data_augment: bool = False
    repeat_time: float = 1.0
    max_dynamic_patch: Optional[int] = None


@dataclasses.dataclass
class Record:
    source: int
    line: int  # 1-based line number in the annotation file
    text: str


def load_meta(meta_path) -> List[Source]:
    """The datasets named in a meta JSON file; paths stay as written (relative to the working directory)."""
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read meta file '{meta_path}': {error}") from error
    if not isinstance(meta, dict) or not meta:
        raise DataError(f"meta file '{meta_path}' must be a non-empty JSON object {{name: {{root, annotation, ...}}}}")
    sources = []
    for name, entry in meta.items():
        missing = [key for key in ("root", "annotation") if key not in (entry or {})]
        if missing:
            raise DataError(f"meta file '{meta_path}': dataset {name!r} has no {', '.join(missing)}")
        repeat = float(entry.get("repeat_time", 1))
        if repeat <= 0:
            raise DataError(f"meta file '{meta_path}': dataset {name!r} has repeat_time {repeat}, must be > 0")
        sources.append(Source(name, entry["root"], entry["annotation"], bool(entry.get("data_augment", False)),
                              repeat, entry.get("max_dynamic_patch")))
    return sources


def repeat_lines(lines, repeat_time):
    """repeat_time copies of the lines; a fraction takes that share of the file from its start (as official)."""
    whole = int(repeat_time)
    return lines * whole + lines[:int(len(lines) * (repeat_time - whole))]


def parse_sample(text) -> dict:
    """The JSON of one annotation line, checked for structure; raises SampleError."""
    try:
        sample = json.loads(text)
    except json.JSONDecodeError as error:
        raise SampleError(f"not valid JSON ({error})") from error
    if not isinstance(sample, dict):
        raise SampleError("not a JSON object")
    turns = sample.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise SampleError("no conversations (a non-empty list of {from, value} turns is required)")
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in (
                "system", "human", "gpt"):
            raise SampleError(f"turn {index + 1} must be {{'from': 'system'|'human'|'gpt', 'value': str}}")
        if any(reserved in turn["value"] for reserved in RESERVED_STRINGS):
            raise SampleError(f"turn {index + 1} contains one of {', '.join(RESERVED_STRINGS)}, which are reserved "
                              "for image tokens")
    if any(turn["from"] == "system" for turn in turns[1:]):
        raise SampleError("a system turn may only come first")
    dialogue = turns[1:] if turns[0]["from"] == "system" else turns
    if not any(turn["from"] == "gpt" for turn in dialogue):
        raise SampleError("no gpt turn: there is nothing to train on")
    if dialogue[-1]["from"] != "gpt":
        raise SampleError("the conversation ends with a human turn that has no answer")
    _check_media(sample, dialogue)
    return sample


def _check_media(sample, dialogue):
    images, video = sample.get("image"), sample.get("video")
    tags = sum(turn["value"].count(IMAGE_TAG) for turn in dialogue)
    videos = sum(turn["value"].count(VIDEO_TAG) for turn in dialogue)
    if any(IMAGE_TAG in turn["value"] or VIDEO_TAG in turn["value"] for turn in dialogue if turn["from"] == "gpt"):
        raise SampleError(f"{IMAGE_TAG}/{VIDEO_TAG} tags belong in human turns, not in answers")
    if images:
        paths = images if isinstance(images, list) else [images]
        if not all(isinstance(path, str) and path for path in paths):
            raise SampleError("'image' must be a path or a list of paths")
        if tags not in (0, len(paths)) or videos:
            raise SampleError(f"{len(paths)} image(s) but {tags} {IMAGE_TAG} and {videos} {VIDEO_TAG} tags")
    elif video:
        if not isinstance(video, str):
            raise SampleError("'video' must be a path")
        if tags or videos > 1:
            raise SampleError(f"a video sample may have one {VIDEO_TAG} tag and no {IMAGE_TAG} tags")
    elif tags or videos:
        raise SampleError(f"{IMAGE_TAG}/{VIDEO_TAG} tags but no image or video")


class SupervisedDataset(paddle.io.Dataset):
    """All datasets of a meta file as one map-style dataset of model-ready samples."""

    def __init__(self, meta_path, tokenizer, config: DataConfig):
        self.config = config
        self.sources = load_meta(meta_path)
        self.labels = LabelBuilder(tokenizer)
        self.tokenizer = tokenizer
        self.skipped = collections.Counter()
        self.records = self._read_records()
        if not self.records:
            raise DataError(f"no usable samples in the datasets of '{meta_path}'")
        self._lengths = None

    def _read_records(self):
        records, rejected = [], []
        for index, source in enumerate(self.sources):
            try:
                with open(source.annotation, encoding="utf-8") as f:
                    # Not splitlines(): JSON strings may hold U+2028 and other characters it splits at.
                    lines = [(number, text.rstrip("\r\n")) for number, text in enumerate(f, start=1)]
            except OSError as error:
                raise DataError(f"dataset {source.name!r}: cannot read annotation '{source.annotation}': {error}") \
                    from error
            lines = [(number, text) for number, text in lines if text.strip()]
            kept = 0
            for number, text in repeat_lines(lines, source.repeat_time):
                try:
                    parse_sample(text)
                except SampleError as error:
                    self._refuse(source, number, error, at_load=False)
                    rejected.append(f"{source.annotation}:{number}: {error}")
                    continue
                records.append(Record(index, number, text))
                kept += 1
            logger.info("dataset %s: %d samples from %s (repeat_time %g)", source.name, kept, source.annotation,
                        source.repeat_time)
        if rejected:
            logger.warning("skipped %d malformed annotation line(s); first: %s", len(rejected),
                           " | ".join(rejected[:SUMMARY_EXAMPLES]))
        return records

    def _refuse(self, source, line, error, at_load):
        location = f"{source.annotation}:{line}"
        if self.config.bad_sample_policy == "error":
            raise DataError(f"{location}: {error}") from error
        self.skipped[type(error).__name__] += 1
        if at_load:
            logger.warning("skipping %s: %s (%d skipped while loading so far)", location, error,
                           sum(self.skipped.values()))

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        for attempt in range(MAX_CONSECUTIVE_SKIPS):
            position = (index + attempt) % len(self.records)
            record = self.records[position]
            try:
                return self.build(position)
            except (SampleError, ImageLoadError, VideoLoadError) as error:
                self._refuse(self.sources[record.source], record.line, error, at_load=True)
        raise DataError(f"{MAX_CONSECUTIVE_SKIPS} consecutive samples from index {index} failed to load; "
                        "see the warnings above")

    # --- one sample ---------------------------------------------------------------
    def build(self, index) -> Dict[str, np.ndarray]:
        """input_ids, labels, pixel_values [tiles, 3, S, S] and image_flags [tiles] for record `index`."""
        record = self.records[index]
        source = self.sources[record.source]
        sample = parse_sample(record.text)
        turns = sample["conversations"]
        system = turns[0]["value"] if turns[0]["from"] == "system" else None
        dialogue = [dict(turn) for turn in (turns[1:] if system is not None else turns)]
        rng = np.random.default_rng([self.config.seed, index])
        if sample.get("image"):
            tiles, counts, flags = self._images(sample["image"], source, dialogue, rng)
        elif sample.get("video"):
            tiles, counts, flags = self._video(sample["video"], source, dialogue, rng)
        else:
            tiles, counts, flags = self._blank(rng), [], 0
        tokens = [self.config.num_image_token * count for count in counts]
        rendered = render(self.config.template, [(turn["from"], turn["value"]) for turn in dialogue], system)
        input_ids, labels = self.labels.build(rendered, tokens)
        if len(input_ids) > self.config.max_seq_length:
            raise SampleError(f"{len(input_ids)} tokens with its image tokens, more than max_seq_length "
                              f"{self.config.max_seq_length}")
        return dict(input_ids=input_ids, labels=labels, pixel_values=np.stack(tiles),
                    image_flags=np.full(len(tiles), flags, dtype=np.int64))

    def _images(self, images, source, dialogue, rng):
        paths = images if isinstance(images, list) else [images]
        max_tiles = source.max_dynamic_patch or self.config.max_dynamic_patch
        if len(paths) > 1:
            max_tiles = max(1, max_tiles // len(paths))
        tiles, counts = [], []
        for path in paths:
            image_tiles = self._tile(open_image(os.path.join(source.root, path)), max_tiles)
            tiles += [self._transform(tile, source, rng) for tile in image_tiles]
            counts.append(len(image_tiles))
        if not any(IMAGE_TAG in turn["value"] for turn in dialogue):
            prefix = IMAGE_TAG + "\n" if len(paths) == 1 else "".join(
                f"Image-{i + 1}: {IMAGE_TAG}\n" for i in range(len(paths)))
            _first_human(dialogue)["value"] = prefix + _first_human(dialogue)["value"]
        _fill(dialogue)
        return tiles, counts, 1

    def _video(self, video, source, dialogue, rng):
        frames = read_video_frames(os.path.join(source.root, video), num_segments=self.config.video_frames)
        tiles = [self._transform(self._tile(Image.fromarray(frame), 1)[0], source, rng) for frame in frames]
        prefix = "".join(f"Frame{i + 1}: {IMAGE_TAG}\n" for i in range(len(frames)))
        human = _first_human(dialogue)
        if VIDEO_TAG in human["value"]:
            human["value"] = human["value"].replace(VIDEO_TAG + "\n", prefix, 1).replace(VIDEO_TAG, prefix, 1)
        else:
            human["value"] = prefix + human["value"]
        _fill(dialogue)
        return tiles, [1] * len(frames), 1

    def _blank(self, rng):
        """The official stand-in image of text-only samples; image_flags=0 keeps it out of the LLM."""
        blank = Image.new("RGB", (224, 224), (255, 255, 255))
        return [self._transform(self._tile(blank, 1)[0], None, rng)]

    def _tile(self, image, max_tiles):
        config = self.config
        if not config.dynamic_image_size:
            return [image]
        return dynamic_preprocess(image, min_num=config.min_dynamic_patch, max_num=max_tiles,
                                  image_size=config.image_size, use_thumbnail=config.use_thumbnail)

    def _transform(self, tile, source, rng):
        """Resize to the square input size and normalise; data_augment re-encodes as JPEG first (official)."""
        if source is not None and source.data_augment:
            tile = _jpeg_degrade(tile, int(rng.integers(75, 101)))
        size = (self.config.image_size, self.config.image_size)
        if tile.mode != "RGB":
            tile = tile.convert("RGB")
        if tile.size != size:
            tile = tile.resize(size, Image.BICUBIC)
        mean, std = (np.asarray(v, dtype=np.float32).reshape(3, 1, 1)
                     for v in NORMALIZATION[self.config.normalize_type])
        return (np.asarray(tile, dtype=np.float32).transpose(2, 0, 1) / np.float32(255) - mean) / std

    # --- lengths for group_by_length ------------------------------------------------
    @property
    def lengths(self) -> List[int]:
        """Approximate token counts: the line's "length" if given, else text tokens plus image tokens at most."""
        if self._lengths is None:
            self._lengths = [self._estimate_length(record) for record in self.records]
        return self._lengths

    def _estimate_length(self, record):
        sample = json.loads(record.text)
        if isinstance(sample.get("length"), int):
            return sample["length"]
        text = "\n".join(turn["value"] for turn in sample["conversations"])
        tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        images = sample.get("image")
        if images:
            count = len(images) if isinstance(images, list) else 1
            per_image = self.config.max_dynamic_patch + int(self.config.use_thumbnail) if count == 1 else 1
            tokens += count * per_image * self.config.num_image_token
        elif sample.get("video"):
            tokens += self.config.video_frames * self.config.num_image_token
        return tokens


def _fill(dialogue):
    """Each <image> tag becomes one placeholder; LabelBuilder widens it to its image's token count."""
    for turn in dialogue:
        turn["value"] = fill_image_tags(turn["value"], image_placeholder())


def _first_human(dialogue):
    return next(turn for turn in dialogue if turn["from"] == "human")


def _jpeg_degrade(image, quality):
    with io.BytesIO() as buffer:
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")


class Collator:
    """Right-pads input_ids (pad id), labels (IGNORE_INDEX) and the attention mask; concatenates tiles."""

    def __init__(self, pad_token_id):
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)

    def __call__(self, samples):
        longest = max(len(sample["input_ids"]) for sample in samples)
        input_ids = np.full((len(samples), longest), self.pad_token_id, dtype=np.int64)
        labels = np.full((len(samples), longest), IGNORE_INDEX, dtype=np.int64)
        attention_mask = np.zeros((len(samples), longest), dtype=np.int64)
        for row, sample in enumerate(samples):
            length = len(sample["input_ids"])
            input_ids[row, :length] = sample["input_ids"]
            labels[row, :length] = sample["labels"]
            attention_mask[row, :length] = 1
        return dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask,
                    pixel_values=np.concatenate([sample["pixel_values"] for sample in samples]),
                    image_flags=np.concatenate([sample["image_flags"] for sample in samples]))
