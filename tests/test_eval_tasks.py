"""Each benchmark's files, prompts and scoring wired together, on hand-written answers (no model)."""
import json
import os

import pytest

from paddlemix.examples.internvl2.eval.datafiles import DatasetError
from paddlemix.examples.internvl2.eval.runner import merge
from paddlemix.examples.internvl2.eval.tasks import build_task, check_visuals
from paddlemix.examples.internvl2.eval.tasks.base import unique_keys


def write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))


def write_jsonl(path, rows):
    write(path, "".join(json.dumps(row) + "\n" for row in rows))


def score(task, responses, out_dir):
    items = task.load()
    records = merge(items, dict(zip([item.key for item in items], responses)))
    return records, task.evaluate(records, str(out_dir))


def test_docvqa_val_anls_over_the_ground_truth_file(tmp_path):
    write_jsonl(tmp_path / "data/docvqa/val.jsonl",
                [{"image": f"data/docvqa/val/documents/{i}.png", "question": f"q{i}", "question_id": 10 + i,
                  "answer": ["x"]} for i in range(2)])
    write(tmp_path / "data/docvqa/val/val_v1.0.json",
          {"dataset_name": "docvqa", "data": [{"questionId": 10, "answers": ["Total: 12"]},
                                              {"questionId": 11, "answers": ["abcdefghij", "zz"]}]})
    task = build_task("vqa-docvqa-val", str(tmp_path))
    records, metrics = score(task, ["total: 12", "abcdefgxyz"], tmp_path)
    assert records[0]["question"] == "q0 Answer the question using a single word or phrase."
    assert task.max_new_tokens == 100
    assert metrics == {"anls": pytest.approx((1.0 + 0.7) / 2)}
    with pytest.raises(DatasetError, match="missing"):
        check_visuals(task, task.load())


def test_chartqa_averages_the_human_and_augmented_splits(tmp_path):
    for split, answers in (("human", ["12%", "Red"]), ("augmented", ["7", "3"])):
        write_jsonl(tmp_path / f"data/chartqa/test_{split}.jsonl",
                    [{"image": "x.png", "question": "q", "question_id": i, "answer": a} for i, a in enumerate(answers)])
    records, metrics = score(build_task("vqa-chartqa-test", str(tmp_path)), ["0.12", "blue", "7.2", "3"], tmp_path)
    assert [r["key"] for r in records] == ["test_human/0", "test_human/1", "test_augmented/0", "test_augmented/1"]
    assert metrics == {"relaxed_accuracy": 0.75, "test_human": 0.5, "test_augmented": 1.0}


def test_ai2d_uses_the_question_as_given_and_letter_accuracy(tmp_path):
    question = "Which part?\nA. leaf\nB. root\nAnswer with the option's letter from the given choices directly."
    write_jsonl(tmp_path / "data/ai2diagram/test_vlmevalkit.jsonl",
                [{"image": "a.png", "question": question, "question_id": 1, "answer": "B"},
                 {"image": "b.png", "question": question, "question_id": 2, "answer": "A"}])
    records, metrics = score(build_task("vqa-ai2d-test", str(tmp_path)), ["b", "B"], tmp_path)
    assert records[0]["question"] == question
    assert metrics == {"accuracy": 0.5}


def test_gqa_accuracy_from_the_official_questions_file(tmp_path):
    write_jsonl(tmp_path / "data/gqa/llava_gqa_testdev_balanced_qwen_format.jsonl",
                [{"image": "i.jpg", "question": "q", "question_id": qid, "answer": "x"} for qid in ("201", "202")])
    write(tmp_path / "data/gqa/testdev_balanced_questions.json",
          {"201": {"answer": "yes", "isBalanced": True}, "202": {"answer": "left", "isBalanced": True}})
    _, metrics = score(build_task("vqa-gqa-testdev", str(tmp_path)), ["Yes.", "right"], tmp_path)
    assert metrics == {"accuracy": 0.5}


def test_test_splits_write_the_server_files(tmp_path):
    write_jsonl(tmp_path / "data/vizwiz/vizwiz_test.jsonl",
                [{"image": "data/vizwiz/test/VizWiz_test_1.jpg", "question": "What is it?",
                  "question_id": "data/vizwiz/test/VizWiz_test_1.jpg"}])
    task = build_task("vqa-vizwiz-test", str(tmp_path))
    records, metrics = score(task, ["unanswerable"], tmp_path)
    assert records[0]["question"] == ("What is it? When the provided information is insufficient, respond with "
                                      "'Unanswerable'. Answer the question using a single word or phrase.")
    with open(tmp_path / metrics["submission"], encoding="utf-8") as f:
        assert json.load(f) == [{"image": "VizWiz_test_1.jpg", "answer": "unanswerable"}]
    write_jsonl(tmp_path / "data/docvqa/test.jsonl", [{"image": "d.png", "question": "q", "question_id": 7}])
    _, metrics = score(build_task("vqa-docvqa-test", str(tmp_path)), ["42"], tmp_path)
    with open(tmp_path / metrics["submission"], encoding="utf-8") as f:
        assert json.load(f) == [{"questionId": 7, "answer": "42"}]


def test_scienceqa_prompt_and_accuracy(tmp_path):
    write_jsonl(tmp_path / "data/scienceqa/scienceqa_test_img.jsonl",
                [{"image": "data/scienceqa/images/1.png", "hint": "A hint.", "question": "Which is a mammal?",
                  "choices": ["frog", "whale"], "answer": 1},
                 {"image": "data/scienceqa/images/2.png", "hint": "", "question": "Pick one.",
                  "choices": ["red", "blue", "green"], "answer": 2}])
    records, metrics = score(build_task("scienceqa", str(tmp_path)), ["whale", "(B)"], tmp_path)
    assert records[0]["question"] == ("A hint.\nWhich is a mammal?\nA. frog\nB. whale\n"
                                      "Answer with the option's letter from the given choices directly.")
    assert records[1]["question"].startswith("Pick one.\nA. red")
    assert metrics == {"accuracy": 0.5}


def test_mme_original_release_layout(tmp_path):
    from paddlemix.examples.internvl2.eval.choice_metrics import MME_TASKS

    base = tmp_path / "data/mme/MME_Benchmark_release_version"
    for task in MME_TASKS["Perception"] + MME_TASKS["Cognition"]:
        write(base / task / "images" / "a.jpg", "not read here")
        write(base / task / "questions_answers_YN" / "a.txt", "Is it? Please answer yes or no.\tYes\n"
                                                              "Is it not? Please answer yes or no.\tNo\n")
    task = build_task("mme", str(tmp_path))
    items = task.load()
    assert len(items) == 28 and items[0].visual.path.endswith(os.path.join("existence", "images", "a.jpg"))
    _, metrics = score(task, ["是", "No"] * 14, tmp_path)
    assert metrics["Perception"] == 2000 and metrics["Cognition"] == 800
    write(base / "count" / "questions_answers_YN" / "a.txt", "Is it?\tMaybe\n")
    with pytest.raises(DatasetError, match="expected 'question<TAB>Yes|No'"):
        task.load()


def test_pope_labels_must_match_the_questions(tmp_path):
    write_jsonl(tmp_path / "data/pope/llava_pope_test.jsonl",
                [{"question_id": i, "image": "x.jpg", "text": "Is there a cat?", "category": c}
                 for i, c in enumerate(["adversarial", "popular", "random", "random"])])
    os.makedirs(tmp_path / "data/pope/val2014")
    for split in ("adversarial", "popular", "random"):
        write_jsonl(tmp_path / f"data/pope/coco/coco_pope_{split}.json", [{"label": "yes"}])
    task = build_task("pope", str(tmp_path))
    with pytest.raises(DatasetError, match="2 'random' questions in llava_pope_test.jsonl but 1 labels"):
        score(task, ["yes"] * 4, tmp_path)


def test_unique_keys_fall_back_to_positions():
    assert unique_keys([3, 4]) == ["3", "4"]
    assert unique_keys([3, 3], prefix="s/") == ["s/0:3", "s/1:3"]


def test_chartqa_splits_alone(tmp_path):
    write_jsonl(tmp_path / "data/chartqa/test_human.jsonl",
                [{"image": "x.png", "question": "q", "question_id": i, "answer": a} for i, a in enumerate(["12%", "Red"])])
    task = build_task("vqa-chartqa-test-human", str(tmp_path))
    records, metrics = score(task, ["0.12", "blue"], tmp_path)
    assert [r["key"] for r in records] == ["0", "1"] and task.max_new_tokens == 100
    assert metrics == {"relaxed_accuracy": 0.5, "test_human": 0.5}
    with pytest.raises(DatasetError, match="test_augmented.jsonl"):
        build_task("vqa-chartqa-test-augmented", str(tmp_path)).load()


def test_vqav2_val_score_and_testdev_submission(tmp_path):
    write_jsonl(tmp_path / "data/vqav2/vqav2_val.jsonl",
                [{"image": "data/coco/val2014/a.jpg", "question": "What color?", "question_id": 7}])
    write(tmp_path / "data/vqav2/v2_mscoco_val2014_annotations.json",
          {"annotations": [{"question_id": 7, "answers": [{"answer": "red"}] * 10}]})
    task = build_task("vqa-vqav2-val", str(tmp_path))
    records, metrics = score(task, ["Red"], tmp_path)
    assert records[0]["question"] == "What color? Answer the question using a single word or phrase."
    assert metrics == {"accuracy": 1.0} and task.max_new_tokens == 10
    write_jsonl(tmp_path / "data/vqav2/vqav2_testdev.jsonl",
                [{"image": "data/coco/test2015/b.jpg", "question": "How many?", "question_id": 9}])
    _, metrics = score(build_task("vqa-vqav2-testdev", str(tmp_path)), ["2"], tmp_path)
    assert metrics == {"submission": "vqa-vqav2-testdev-submission.json"}
    with open(tmp_path / metrics["submission"], encoding="utf-8") as f:
        assert json.load(f) == [{"question_id": 9, "answer": "2"}]


def test_ocrvqa_exact_match_over_any_annotation(tmp_path):
    for split in ("val", "test"):
        write_jsonl(tmp_path / f"data/ocrvqa/ocrvqa_{split}.jsonl",
                    [{"image": "data/ocrvqa/images/1.jpg", "question": "Who wrote this book?", "question_id": 1,
                      "answer": ["Jane Doe", "J. Doe"]},
                     {"image": "data/ocrvqa/images/2.jpg", "question": "Is this a novel?", "question_id": 2,
                      "answer": "No"}])
        task = build_task(f"vqa-ocrvqa-{split}", str(tmp_path))
        _, metrics = score(task, [" j. doe ", "yes"], tmp_path)
        assert metrics == {"accuracy": 0.5} and task.max_new_tokens == 100


def test_ccbench_is_mmbench_in_chinese_on_its_own_file(tmp_path):
    from test_eval_end_to_end import make_mmbench_dev

    make_mmbench_dev(tmp_path)
    os.rename(tmp_path / "data/mmbench/mmbench_dev_20230712.tsv", tmp_path / "data/mmbench/CCBench_legacy.tsv")
    task = build_task("ccbench-dev", str(tmp_path))
    records, metrics = score(task, ["A", "B", "C"], tmp_path)
    assert records[1]["question"] == "Which color?\nA. red\nB. blue\n请直接回答选项字母。"
    assert metrics["accuracy"] == 1.0 and metrics["circular_accuracy"] == 1.0
    assert metrics["submission"] in ("CCBench_legacy.xlsx", "CCBench_legacy.tsv")


def test_mmvet_writes_the_evaluators_submission(tmp_path):
    write_jsonl(tmp_path / "data/mm-vet/llava-mm-vet.jsonl",
                [{"question_id": 0, "image": "v1_0.png", "text": "What is the total?"},
                 {"question_id": 1, "image": "v1_1.png", "text": "Explain the joke."}])
    task = build_task("mmvet", str(tmp_path))
    records, metrics = score(task, ["12", "It is a pun."], tmp_path)
    assert records[0]["question"] == "What is the total? " and task.max_new_tokens == 1000  # the space is upstream's
    assert metrics["submission"] == "mmvet-submission.json" and "MM-Vet evaluator" in metrics["or_score_with"]
    with open(tmp_path / "mmvet-submission.json", encoding="utf-8") as f:
        assert json.load(f) == {"v1_0": "12", "v1_1": "It is a pun."}
