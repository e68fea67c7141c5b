"""MMMU: the official prompt, answer parsing and per-subject/domain scoring, and a run on the tiny model."""
import io
import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from paddlemix.examples.internvl2.eval import evaluate
from paddlemix.examples.internvl2.eval.mmmu_metrics import (SUBJECTS, extract_numbers, normalize, open_correct,
                                                           parse_open_response)
from paddlemix.examples.internvl2.eval.tasks import build_task
from paddlemix.examples.internvl2.eval.visuals import PixelSettings


def png(seed, size=(30, 20)):
    buffer = io.BytesIO()
    Image.fromarray(np.random.RandomState(seed).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, "PNG")
    return {"bytes": buffer.getvalue(), "path": f"{seed}.png"}


def make_mmmu(root, split="dev", with_open=True):
    """One multiple-choice question (two images) and one open question per subject, in the repository layout."""
    for number, subject in enumerate(SUBJECTS):
        rows = [{"id": f"{split}_{subject}_1", "question": "<image 1> Which is larger? ", "options": "['x', ' y ']",
                 "answer": "B", "question_type": "multiple-choice", "image_1": png(number), "image_2": png(99)},
                {"id": f"{split}_{subject}_2", "question": "How many?", "options": "[]",
                 "answer": "['$MgS$', 'MgS']" if number == 0 else "12", "question_type": "open",
                 "image_1": png(number + 100), "image_2": None}][:2 if with_open else 1]
        for column in [f"image_{i}" for i in range(3, 8)]:
            for row in rows:
                row[column] = None
        os.makedirs(root / "data" / "MMMU" / subject, exist_ok=True)
        pd.DataFrame(rows).to_parquet(root / "data" / "MMMU" / subject / f"{split}-00000-of-00001.parquet")


def test_open_answer_parsing_as_upstream():
    assert normalize(" 1,234.567 ") == [1234.57] and normalize("A") == [" a", "a "] and normalize("MgS") == ["mgs"]
    # upstream's three patterns overlap, and scores depend on it
    assert extract_numbers("1,000 items") == ["1,000", "000"]
    assert extract_numbers("2.5e3 and -3.5") == ["2.5e3", "2", "3", "-3.5"]
    assert parse_open_response("So the answer is 12.") == [12.0]  # "12" itself normalises to the number
    assert open_correct("12", parse_open_response("The result is 12 apples"))
    assert open_correct(["$MgS$", "MgS"], parse_open_response("It forms MgS"))
    assert not open_correct("12", parse_open_response("It is 13"))
    assert open_correct("1/64", parse_open_response("1/64"))


def test_prompts_images_and_scores(tmp_path):
    make_mmmu(tmp_path)
    task = build_task("mmmu-dev", str(tmp_path))
    items = task.load()
    assert len(items) == 2 * len(SUBJECTS) and task.max_new_tokens == 10
    assert items[0].prompt == ("<image 1> Which is larger?\nA. x\nB. y\n"
                               "Answer with the option's letter from the given choices directly.")
    assert items[1].prompt == "How many?\nAnswer the question using a single word or phrase."
    assert items[1].meta["answer"] == ["$MgS$", "MgS"]
    single = items[0].visual.pixels(PixelSettings(False, 6, 448, True))
    assert single[0].shape == (1, 3, 448, 448) and single[1] == [1]  # the first image only
    tiled, counts = items[0].visual.pixels(PixelSettings(True, 6, 448, True))
    # the first image doubled (60x40, ratio 3:2: 6 tiles + thumbnail), the second one tile, all behind one <image>
    assert tiled.shape[0] == 8 and counts == [8]

    def response(item):
        even = SUBJECTS.index(item.meta["subject"]) % 2 == 0
        if item.meta["question_type"] == "multiple-choice":
            return "B" if even else "A"
        if item.meta["subject"] == "Accounting":
            return "It forms MgS"
        return "The result is 12" if even else "13"

    records = [{"key": item.key, "response": response(item), **item.meta} for item in items]
    metrics = task.evaluate(records, str(tmp_path))
    assert metrics["subjects"]["Accounting"] == {"num": 2, "acc": 1.0}
    assert metrics["subjects"]["Agriculture"] == {"num": 2, "acc": 0.0}
    assert metrics["overall"] == {"num": 60, "acc": 0.5}
    assert metrics["domains"]["Art and Design"] == {"num": 8, "acc": 0.75}  # Art is odd, the other three even
    with open(tmp_path / metrics["submission"], encoding="utf-8") as f:
        assert json.load(f)["dev_Accounting_2"] == "It forms MgS"


def test_a_missing_subject_names_the_layout(tmp_path):
    make_mmmu(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "data" / "MMMU" / "Sociology")
    with pytest.raises(Exception, match=r"no Sociology/dev-\*\.parquet under data/MMMU"):
        build_task("mmmu-dev", str(tmp_path)).load()


def test_mmmu_test_writes_the_submission_only_and_dev_runs_on_the_tiny_model(tiny_1b, tmp_path):
    make_mmmu(tmp_path, "test")
    task = build_task("mmmu-test", str(tmp_path))
    records = [{"key": item.key, "response": "B", **item.meta} for item in task.load()]
    assert task.evaluate(records, str(tmp_path)) == {"submission": "mmmu-test-submission.json"}

    make_mmmu(tmp_path, "dev", with_open=False)
    out = tmp_path / "out"
    results = evaluate.main([tiny_1b, "mmmu-dev", "--data-root", str(tmp_path), "--out-dir", str(out),
                             "--max-new-tokens", "2"])
    assert results["metrics"]["overall"]["num"] == 30 and 0 <= results["metrics"]["overall"]["acc"] <= 1
