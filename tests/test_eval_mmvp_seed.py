"""MMVP, SEED-Bench (image) and Tiny LVLM-eHub: official files, prompts and scorers, by hand and end to end."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from paddlemix.examples.internvl2.eval import evaluate
from paddlemix.examples.internvl2.eval.choice_metrics import mmvp_pair_accuracy
from paddlemix.examples.internvl2.eval.tasks import build_task
from test_eval_tasks import score, write, write_jsonl


def save_image(path, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.RandomState(seed).randint(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)


def make_mmvp(root, questions=4):
    os.makedirs(root / "data" / "MMVP" / "MMVP Images")
    with open(root / "data" / "MMVP" / "Questions.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lndex", "Question", "Options", "Correct Answer"])  # the release's spelling
        for i in range(1, questions + 1):
            writer.writerow([i, "Is the door open?", "(a) Open (b) Closed", "(a)" if i % 2 else "(b)"])
            save_image(root / "data" / "MMVP" / "MMVP Images" / f"{i}.jpg", i)


def make_seed(root, bench=True):
    rows = []
    for i in range(3):
        image = f"SEED-Bench-image/{i}.jpg"
        save_image(root / "data" / "SEED" / image, i)
        rows.append({"text": "What is shown?\nA. a cat\nB. a dog\nAnswer with the option's letter from the given "
                             "choices directly.", "image": image, "answer": "AB"[i % 2], "question_id": f"10{i}"})
    write_jsonl(root / "data/SEED/seed.jsonl", rows)
    if bench:
        write(root / "data/SEED/SEED-Bench.json", {
            "question_type": {"Scene Understanding": 1, "Instance Counting": 3},
            "questions": [{"question_id": f"10{i}", "question_type_id": 1 if i < 2 else 3, "answer": "AB"[i % 2],
                           "data_type": "image"} for i in range(3)]})


def test_mmvp_pairs_count_only_when_both_answers_are_right(tmp_path):
    make_mmvp(tmp_path)
    task = build_task("mmvp", str(tmp_path))
    records, metrics = score(task, ["A", "The door is Closed.", "A", "A"], tmp_path)
    assert records[0]["question"] == ("Is the door open?\nA. Open\nB. Closed\n"
                                      "Answer with the option's letter from the given choices directly.")
    assert [r["gt"] for r in records] == ["A", "B", "A", "B"] and task.max_new_tokens == 100
    assert metrics == {"accuracy": 0.5, "question_accuracy": 0.75}  # pair 2 has one side wrong
    assert mmvp_pair_accuracy([True, True, True]) == 1.0  # an unpaired last question is left out, as upstream
    assert mmvp_pair_accuracy([]) == 0.0


def test_seed_acc_at_1_is_exact_and_the_per_type_scores_take_the_first_letter(tmp_path):
    make_seed(tmp_path)
    records, metrics = score(build_task("seed", str(tmp_path)), ["A", "B.", "B"], tmp_path)
    assert records[0]["question"].endswith("directly.")
    assert metrics["accuracy"] == pytest.approx(1 / 3)  # "B." is not "B" for Acc@1
    assert metrics["per_type"] == {"Scene Understanding": 100.0, "Instance Counting": 0.0}
    assert metrics["image_accuracy"] == pytest.approx(200 / 3)
    os.remove(tmp_path / "data/SEED/SEED-Bench.json")
    assert score(build_task("seed", str(tmp_path)), ["A", "B", "A"], tmp_path)[1] == {"accuracy": 1.0}


@pytest.mark.parametrize("dataset,make", [("mmvp", make_mmvp), ("seed", make_seed)])
def test_end_to_end_on_the_tiny_model(tiny_1b, tmp_path, dataset, make):
    make(tmp_path)
    out = tmp_path / "out"
    results = evaluate.main([tiny_1b, dataset, "--data-root", str(tmp_path), "--out-dir", str(out),
                             "--max-new-tokens", "2"])
    with open(out / os.path.basename(tiny_1b) / dataset / "answers.json", encoding="utf-8") as f:
        records = json.load(f)
    assert len(records) in (3, 4) and all(isinstance(r["response"], str) for r in records)
    assert results["metrics"] == build_task(dataset, str(tmp_path)).evaluate(records, str(out))


def test_tiny_lvlm_whole_word_match_per_task_and_the_summed_overall(tmp_path):
    from paddlemix.examples.internvl2.eval.vqa_metrics import tiny_lvlm_correct

    assert tiny_lvlm_correct("There are Two dogs.", ["2"])  # number words, case, the period
    assert tiny_lvlm_correct("a red-car", "red car")  # "-" becomes a space
    assert not tiny_lvlm_correct("cats", ["cat"])  # whole words only
    assert not tiny_lvlm_correct("the answer", [])
    for task, answers in (("Visual_Reasoning", ["yes", "no"]), ("Object_Hallucination", ["no"])):
        rows = [{"image_path": f"{i}.png", "question": f"Q{i}?", "gt_answers": answer}
                for i, answer in enumerate(answers)]
        write(tmp_path / f"data/tiny_lvlm/updated_datasets/{task}/dataset.json", rows)
        for i in range(len(answers)):
            save_image(tmp_path / f"data/tiny_lvlm/updated_datasets/{task}/{i}.png", i)
    task = build_task("tiny_lvlm", str(tmp_path))
    records, metrics = score(task, ["No.", "No", "I see no dog"], tmp_path)
    assert [r["task"] for r in records] == ["Object_Hallucination", "Visual_Reasoning", "Visual_Reasoning"]
    assert records[0]["question"] == "Q0? Answer the question using a single word or phrase."
    assert task.max_new_tokens == 30
    assert metrics == {"Object_Hallucination": 1.0, "Visual_Reasoning": 0.5, "Overall": 1.5}
    os.makedirs(tmp_path / "data/tiny_lvlm/updated_datasets/Other")
    write(tmp_path / "data/tiny_lvlm/updated_datasets/Other/dataset.json", [])
    with pytest.raises(Exception, match="expected the task folders"):
        build_task("tiny_lvlm", str(tmp_path)).load()
