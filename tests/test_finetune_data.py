"""Fine-tuning data: meta files, every sample kind, the bad-sample policy, the collator and length grouping.

`write_synthetic_dataset` is shared with the end-to-end tests.
"""
import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from paddlemix.models.internvl2 import load_tokenizer
from paddlemix.models.internvl2.processing import image_to_pixel_values, video_to_pixel_values
from paddlemix.models.internvl2.train_data import (Collator, DataConfig, DataError, SupervisedDataset,
                                                   repeat_lines)
from paddlemix.models.internvl2.train_labels import IGNORE_INDEX
from paddlemix.models.internvl2.train_trainer import LengthGroupedBatchSampler
from reference import REPO_ROOT, require_asset

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
NUM_IMAGE_TOKEN = 4  # small on purpose: these tests never run a model


def _turns(*texts):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": text} for i, text in enumerate(texts)]


def write_synthetic_dataset(root, repeat_time=1):
    """Images (one without an <image> tag), two images, a video and a text-only chat; returns the meta path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, rgb in COLORS.items():
        Image.fromarray(np.full((160, 300, 3), rgb, dtype=np.uint8)).save(root / "images" / f"{name}.png")
    shutil.copyfile(REPO_ROOT / "paddlemix" / "demo_images" / "demo_clip.mp4", root / "clip.mp4")
    lines = [{"image": f"images/{name}.png", "conversations": _turns("<image>\nWhat color is this?", f"It is {name}.")}
             for name in ("red", "green")]
    lines.append({"image": "images/blue.png", "conversations": _turns("What color is this?", "It is blue.")})
    lines.append({"image": ["images/red.png", "images/blue.png"],
                  "conversations": _turns("Image-1: <image>\nImage-2: <image>\nWhich colors?", "Red and blue.")})
    lines.append({"video": "clip.mp4", "conversations": _turns("<video>\nWhat is shown?", "A short clip.")})
    lines.append({"conversations": _turns("Say hello.", "Hello!", "Again.", "Hello again!")})
    return _write(root, lines, repeat_time)


def _write(root, lines, repeat_time=1, name="train.jsonl"):
    (root / name).write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    meta = {"synthetic": {"root": str(root), "annotation": str(root / name), "data_augment": False,
                          "repeat_time": repeat_time, "length": len(lines)}}
    (root / "meta.json").write_text(json.dumps(meta))
    return str(root / "meta.json")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(require_asset("tokenizers", "internvl2-1b"))


def _config(**changes):
    base = dict(template="Hermes-2", num_image_token=NUM_IMAGE_TOKEN, image_size=448, dynamic_image_size=True,
                use_thumbnail=True, max_dynamic_patch=6, video_frames=3)
    return DataConfig(**dict(base, **changes))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tokenizer):
    return SupervisedDataset(write_synthetic_dataset(tmp_path_factory.mktemp("synthetic")), tokenizer, _config())


def _context_count(tokenizer, sample):
    return int((sample["input_ids"] == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")).sum())


def _answer(tokenizer, sample):
    trained = sample["labels"] != IGNORE_INDEX
    return tokenizer.decode(sample["input_ids"][trained].tolist())


def test_single_image_matches_inference_preprocessing(dataset, tokenizer):
    sample = dataset[0]
    expected = image_to_pixel_values(dataset.sources[0].root + "/images/red.png", max_num=6)
    np.testing.assert_array_equal(sample["pixel_values"], expected)  # 2 tiles + thumbnail, as load_image
    assert sample["image_flags"].tolist() == [1, 1, 1]
    assert _context_count(tokenizer, sample) == 3 * NUM_IMAGE_TOKEN
    assert _answer(tokenizer, sample) == "It is red.<|im_end|>"


def test_a_missing_image_tag_goes_first_in_the_first_human_turn(dataset, tokenizer):
    text = tokenizer.decode(dataset[2]["input_ids"].tolist())
    assert "<|im_start|>user\n<img>" in text and "</img>\nWhat color is this?<|im_end|>" in text


def test_multi_image_samples_split_the_tile_budget(dataset, tokenizer):
    sample = dataset[3]
    # max(1, 6 // 2) = 3 tiles per image: a 300x160 image gets 2 tiles + thumbnail.
    assert sample["pixel_values"].shape[0] == 6
    assert _context_count(tokenizer, sample) == 6 * NUM_IMAGE_TOKEN
    assert _answer(tokenizer, sample) == "Red and blue.<|im_end|>"


def test_video_samples_use_the_inference_frames_and_prompt(dataset, tokenizer):
    sample = dataset[4]
    pixels, per_frame = video_to_pixel_values(dataset.sources[0].root + "/clip.mp4", max_num=1, num_segments=3)
    np.testing.assert_array_equal(sample["pixel_values"], pixels)
    assert per_frame == [1, 1, 1]
    image = "<img>" + "<IMG_CONTEXT>" * NUM_IMAGE_TOKEN + "</img>"
    question = "".join(f"Frame{i + 1}: {image}\n" for i in range(3)) + "What is shown?"
    assert f"<|im_start|>user\n{question}<|im_end|>" in tokenizer.decode(sample["input_ids"].tolist())


def test_text_only_samples_get_a_blank_tile_that_the_model_drops(dataset, tokenizer):
    sample = dataset[5]
    assert sample["pixel_values"].shape == (1, 3, 448, 448)
    assert sample["image_flags"].tolist() == [0]
    assert _context_count(tokenizer, sample) == 0
    assert _answer(tokenizer, sample) == "Hello!<|im_end|>Hello again!<|im_end|>"


def test_repeat_time_copies_and_fractions():
    lines = list(range(10))
    assert repeat_lines(lines, 0.5) == lines[:5]
    assert repeat_lines(lines, 2) == lines * 2
    assert repeat_lines(lines, 1.3) == lines + lines[:3]


def test_collator_pads_labels_and_concatenates_tiles(dataset, tokenizer):
    batch = Collator(tokenizer.pad_token_id)([dataset[0], dataset[5]])
    lengths = [len(dataset[0]["input_ids"]), len(dataset[5]["input_ids"])]
    assert batch["input_ids"].shape == (2, max(lengths))
    short = int(np.argmin(lengths))
    assert (batch["input_ids"][short, min(lengths):] == tokenizer.pad_token_id).all()
    assert (batch["labels"][short, min(lengths):] == IGNORE_INDEX).all()
    assert batch["attention_mask"].sum(axis=1).tolist() == lengths
    assert batch["pixel_values"].shape[0] == 4 and batch["image_flags"].tolist() == [1, 1, 1, 0]


BAD_LINES = [
    "{not json",
    json.dumps({"conversations": []}),
    json.dumps({"conversations": _turns("Only a question.")}),
    json.dumps({"conversations": [{"from": "gpt", "value": "Answer first."}, {"from": "human", "value": "?"}]}),
    json.dumps({"image": "images/red.png", "conversations": _turns("<image><image> two tags", "One image.")}),
    json.dumps({"conversations": _turns("<image>\nNo image given.", "Hm.")}),
    json.dumps({"conversations": _turns("Literal <IMG_CONTEXT>", "Reserved.")}),
]


def _bad_dataset(root, tokenizer, policy):
    write_synthetic_dataset(root)
    good = json.dumps({"image": "images/red.png", "conversations": _turns("<image>\nColor?", "Red.")})
    meta = _write(root, [good] + BAD_LINES + [good], name="mixed.jsonl")
    return SupervisedDataset(meta, tokenizer, _config(bad_sample_policy=policy))


def test_malformed_lines_are_skipped_counted_and_logged(tmp_path, tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        dataset = _bad_dataset(tmp_path, tokenizer, "skip")
    assert len(dataset) == 2 and [record.line for record in dataset.records] == [1, len(BAD_LINES) + 2]
    assert sum(dataset.skipped.values()) == len(BAD_LINES)
    assert "skipped 7 malformed annotation line(s)" in caplog.text
    assert f"{tmp_path / 'mixed.jsonl'}:2: not valid JSON" in caplog.text


def test_malformed_lines_stop_training_under_the_error_policy(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: not valid JSON"):
        _bad_dataset(tmp_path, tokenizer, "error")


def _load_failures(root, tokenizer, policy):
    write_synthetic_dataset(root)
    lines = [{"image": "images/missing.png", "conversations": _turns("<image>\nColor?", "Unknown.")},
             {"image": "images/red.png", "conversations": _turns("<image>\n" + "Very long. " * 200, "Yes.")},
             {"image": "images/green.png", "conversations": _turns("<image>\nColor?", "Green.")}]
    return SupervisedDataset(_write(root, lines, name="load.jsonl"), tokenizer,
                             _config(max_seq_length=400, bad_sample_policy=policy))


def test_samples_failing_at_load_are_replaced_by_the_next_one(tmp_path, tokenizer, caplog):
    dataset = _load_failures(tmp_path, tokenizer, "skip")
    with caplog.at_level(logging.WARNING):
        sample = dataset[0]
    assert _answer(tokenizer, sample) == "Green.<|im_end|>"
    assert f"load.jsonl:1: cannot read image '{tmp_path}/images/missing.png': file not found" in caplog.text
    assert "load.jsonl:2:" in caplog.text and "more than max_seq_length 400" in caplog.text
    assert dict(dataset.skipped) == {"ImageLoadError": 1, "SampleError": 1}


def test_samples_failing_at_load_stop_training_under_the_error_policy(tmp_path, tokenizer):
    dataset = _load_failures(tmp_path, tokenizer, "error")
    with pytest.raises(DataError, match=r"load\.jsonl:1: cannot read image .*file not found"):
        dataset[0]
    with pytest.raises(DataError, match=r"load\.jsonl:2: \d+ tokens with its image tokens, more than"):
        dataset[1]


def test_data_augment_is_random_per_sample_but_reproducible(tmp_path, tokenizer):
    meta = write_synthetic_dataset(tmp_path)
    noise = np.random.RandomState(0).randint(0, 256, size=(160, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "images" / "red.png")  # flat colours survive JPEG unchanged
    spec = json.loads((tmp_path / "meta.json").read_text())
    spec["synthetic"]["data_augment"] = True
    (tmp_path / "meta.json").write_text(json.dumps(spec))
    augmented = SupervisedDataset(meta, tokenizer, _config())
    first, again = augmented[0]["pixel_values"], augmented[0]["pixel_values"]
    np.testing.assert_array_equal(first, again)
    plain = image_to_pixel_values(str(tmp_path / "images/red.png"), max_num=6)
    assert not np.array_equal(first, plain)


def test_length_grouped_batches_are_similar_disjoint_and_resumable():
    lengths = np.random.RandomState(0).randint(10, 1000, size=64).tolist()
    ranks = [LengthGroupedBatchSampler(lengths, 4, num_replicas=2, rank=rank, data_seed=3) for rank in (0, 1)]
    batches = [list(sampler) for sampler in ranks]
    seen = [index for rank_batches in batches for batch in rank_batches for index in batch]
    assert sorted(seen) == list(range(64))  # every sample once, no overlap between ranks
    spread = np.mean([np.ptp([lengths[i] for i in batch]) for batch in batches[0]])
    assert spread < 0.25 * np.ptp(lengths)  # grouped: much less padding than random batches
    assert batches[0] == list(LengthGroupedBatchSampler(lengths, 4, num_replicas=2, rank=0, data_seed=3))
    resumed = LengthGroupedBatchSampler(lengths, 4, num_replicas=2, rank=0, data_seed=3)
    resumed.set_epoch(0, consumed_samples=3 * 4 * 2)  # three global steps done
    assert list(resumed) == batches[0][3:]
    other_epoch = LengthGroupedBatchSampler(lengths, 4, num_replicas=2, rank=0, data_seed=3)
    other_epoch.set_epoch(1)
    assert list(other_epoch) != batches[0]
