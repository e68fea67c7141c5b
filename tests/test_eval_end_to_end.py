"""The evaluation suite end to end: a tiny random checkpoint on tiny datasets in the official formats.

The answers are gibberish; the tests check the flow (files, sharding, resume) and that the
reported scores are what the scorers give on the saved answers.
"""
import base64
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from paddlemix.examples.internvl2.eval import choice_metrics, evaluate, vqa_metrics
from paddlemix.examples.internvl2.eval.choice_metrics import MME_TASKS
from paddlemix.examples.internvl2.eval.predictor import Predictor
from paddlemix.examples.internvl2.eval.tasks.mvbench import TASKS as MVBENCH_TASKS
from reference import REPO_ROOT, load_tool, require_asset

EVAL_DIR = REPO_ROOT / "paddlemix" / "examples" / "internvl2" / "eval"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = require_asset("tokenizers", "internvl2-1b")
    out = tmp_path_factory.mktemp("tiny-eval")
    load_tool("make_tiny_checkpoint").make_tiny_checkpoint(str(folder / "config.json"), str(folder), str(out))
    return str(out)


def save_image(path, seed, size=(40, 56)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 255, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def make_textvqa(root):
    rows, annotations = [], []
    for i in range(4):
        save_image(f"{root}/data/textvqa/train_images/{i}.jpg", i)
        rows.append({"image": f"data/textvqa/train_images/{i}.jpg", "question": f"What is written on sign {i}?",
                     "question_id": 100 + i, "answer": "stop"})
        annotations.append({"question_id": 100 + i, "answers": [{"answer": a} for a in ["stop"] * 6 + ["go"] * 4]})
    write_jsonl(f"{root}/data/textvqa/textvqa_val.jsonl", rows)
    write_json(f"{root}/data/textvqa/textvqa_val_annotations.json", {"annotations": annotations})


def make_mme(root):
    base = f"{root}/data/mme/MME_Benchmark_release_version"
    for n, task in enumerate(MME_TASKS["Perception"] + MME_TASKS["Cognition"]):
        save_image(f"{base}/{task}/img{n}.png", n, size=(20, 20))
        with open(f"{base}/{task}/img{n}.txt", "w", encoding="utf-8") as f:
            f.write(f"Is this {task}? Please answer yes or no.\tYes\nIs this a cat? Please answer yes or no.\tNo\n")
    with open(f"{base}/artwork/orphan.txt", "w", encoding="utf-8") as f:  # no image: skipped, as in the zip
        f.write("Is this art? Please answer yes or no.\tYes\n")


def make_pope(root):
    rows, qid = [], 0
    for split in ("adversarial", "popular", "random"):
        labels = []
        for label in ("yes", "no"):
            save_image(f"{root}/data/pope/val2014/COCO_{qid}.jpg", qid)
            rows.append({"question_id": qid, "image": f"COCO_{qid}.jpg", "category": split,
                         "text": "Is there a dog in the image?\nAnswer the question using a single word or phrase."})
            labels.append({"question_id": qid, "label": label})
            qid += 1
        write_jsonl(f"{root}/data/pope/coco/coco_pope_{split}.json", labels)
    write_jsonl(f"{root}/data/pope/llava_pope_test.jsonl", rows)


def make_mmbench_dev(root):
    def encoded(seed):
        buffer = io.BytesIO()
        Image.fromarray(np.random.RandomState(seed).randint(0, 255, (30, 30, 3), dtype=np.uint8)).save(buffer, "PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\tsource\tl2-category\tcomment\tsplit\timage\n"
    animal = "What animal is shown?\tLook closely."
    lines = [f"1\t{animal}\tdog\tcat\tcow\t\tA\tanimals\tsrc\tl2\t\tdev\t{encoded(1)}\n",
             f"2\tWhich color?\t\tred\tblue\t\t\tB\tcolors\tsrc\tl2\t\tdev\t{encoded(2)}\n",
             f"1000001\t{animal}\tcat\tcow\tdog\t\tC\tanimals\tsrc\tl2\t\tdev\t{encoded(1)}\n"]  # circular copy
    os.makedirs(f"{root}/data/mmbench", exist_ok=True)
    with open(f"{root}/data/mmbench/mmbench_dev_20230712.tsv", "w", encoding="utf-8") as f:
        f.write(header + "".join(lines))


def make_mvbench(root):
    for filename, *_ in MVBENCH_TASKS.values():
        write_json(f"{root}/data/MVBench/json/{filename}", [])
    os.makedirs(f"{root}/data/MVBench/video/ssv2_video")
    shutil.copy(REPO_ROOT / "paddlemix" / "demo_images" / "demo_clip.mp4", f"{root}/data/MVBench/video/ssv2_video/")
    write_json(f"{root}/data/MVBench/json/action_antonym.json",
               [{"video": "demo_clip.mp4", "question": "What happens?", "candidates": ["sliding", "jumping"],
                 "answer": "jumping"}])
    for i in range(1, 7):  # a TVQA clip stored as 3 fps frames 00001.jpg ...
        save_image(f"{root}/data/MVBench/video/tvqa/frames_fps3_hq/clip1/{i:05d}.jpg", i)
    write_json(f"{root}/data/MVBench/json/episodic_reasoning.json",
               [{"video": "clip1", "question": "Who talks?", "candidates": ["Ross", "Rachel", "Joey"],
                 "answer": "Ross", "start": 0.5, "end": 1.5}])


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_dir(out, tiny, dataset):
    return os.path.join(out, os.path.basename(tiny), dataset)


def test_textvqa_prompts_answers_and_score(tiny, tmp_path):
    make_textvqa(tmp_path)
    out = str(tmp_path / "out")
    results = evaluate.main([tiny, "vqa-textvqa-val", "--data-root", str(tmp_path), "--out-dir", out])
    folder = run_dir(out, tiny, "vqa-textvqa-val")
    records = read(os.path.join(folder, "answers.json"))
    assert [r["question_id"] for r in records] == [100, 101, 102, 103]
    assert records[0]["question"] == ("What is written on sign 0? "
                                      "Answer the question using a single word or phrase.")
    expected = np.mean([vqa_metrics.vqa_soft_score(r["response"], ["stop"] * 6 + ["go"] * 4) for r in records])
    assert results["metrics"]["accuracy"] == pytest.approx(expected)
    assert read(os.path.join(folder, "results.json")) == results
    assert results["settings"]["max_new_tokens"] == 10 and results["settings"]["dynamic"] is False


class Interrupted(Exception):
    pass


def test_resume_after_interrupt_gives_the_same_results(tiny, tmp_path, monkeypatch):
    make_textvqa(tmp_path)
    args = [tiny, "vqa-textvqa-val", "--data-root", str(tmp_path), "--dynamic", "--max-num", "2",
            "--max-new-tokens", "4"]
    evaluate.main(args + ["--out-dir", str(tmp_path / "clean")])

    calls, real_call = [], Predictor.__call__

    def stop_after_two(self, item):
        if len(calls) == 2:
            raise Interrupted()
        calls.append(item.key)
        return real_call(self, item)

    monkeypatch.setattr(Predictor, "__call__", stop_after_two)
    with pytest.raises(Interrupted):
        evaluate.main(args + ["--out-dir", str(tmp_path / "resumed")])
    folder = run_dir(str(tmp_path / "resumed"), tiny, "vqa-textvqa-val")
    log = os.path.join(folder, "answers.rank0.jsonl")
    with open(log, encoding="utf-8") as f:
        assert [json.loads(line)["key"] for line in f] == ["100", "101"]  # flushed as produced
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"key": "102", "response": "half-writ')                 # a write cut by the crash

    monkeypatch.setattr(Predictor, "__call__", real_call)
    evaluate.main(args + ["--out-dir", str(tmp_path / "resumed")])
    with open(log, encoding="utf-8") as f:
        keys = [json.loads(line)["key"] for line in f]
    assert keys == ["100", "101", "102", "103"]
    clean = run_dir(str(tmp_path / "clean"), tiny, "vqa-textvqa-val")
    for name in ("answers.json", "results.json"):
        assert read(os.path.join(folder, name)) == read(os.path.join(clean, name))


def test_resume_refuses_other_settings(tiny, tmp_path):
    make_textvqa(tmp_path)
    args = [tiny, "vqa-textvqa-val", "--data-root", str(tmp_path), "--out-dir", str(tmp_path / "out")]
    evaluate.main(args + ["--max-new-tokens", "2"])
    with pytest.raises(ValueError, match="other settings \\(dynamic, max_num\\)"):
        evaluate.main(args + ["--max-new-tokens", "2", "--dynamic"])


def run_script(args, cwd, env=None):
    full_env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=cwd, env=full_env)


def test_mme_through_evaluate_sh(tiny, tmp_path):
    make_mme(tmp_path)
    proc = run_script(["sh", str(EVAL_DIR / "evaluate.sh"), tiny, "mme", "--dynamic", "--max-num", "2",
                       "--max-new-tokens", "3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_dir(str(tmp_path / "results"), tiny, "mme")
    results = read(os.path.join(folder, "results.json"))
    assert results["num_questions"] == 28 and results["settings"]["max_num"] == 2
    records = read(os.path.join(folder, "answers.json"))
    assert records[0]["question"] == ("Is this existence? Please answer yes or no. "
                                      "Answer the question using a single word or phrase.")
    per_task = {}
    for r in records:
        per_task.setdefault(r["subtask"], [[]])[0].append((r["gt"], choice_metrics.mme_clean_response(r["response"])))
    assert results["metrics"] == choice_metrics.mme_scores(per_task)
    with open(os.path.join(folder, "mme", "existence.txt"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert [line.split("\t")[:3] for line in lines] == [
        ["img0.png", records[0]["question"], "Yes"], ["img0.png", records[1]["question"], "No"]]
    table = proc.stdout.splitlines()
    assert table[0].split() == ["dataset", "metric", "value"]
    assert table[1].split()[:2] == ["mme", "Perception"] and table[2].split()[:2] == ["mme", "Cognition"]
    assert table[-1] == f"results: {os.path.relpath(folder, tmp_path)}/results.json"


def test_pope_sharded_over_two_ranks(tiny, tmp_path):
    make_pope(tmp_path)
    command = [sys.executable, str(EVAL_DIR / "evaluate.py"), tiny, "pope", "--max-new-tokens", "3"]
    ranks = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PADDLE_TRAINER_ID=str(rank), PADDLE_TRAINERS_NUM="2"))
             for rank in (0, 1)]
    outputs = [rank.communicate(timeout=600) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert outputs[1][0] == ""                             # only rank 0 reports
    folder = run_dir(str(tmp_path / "results"), tiny, "pope")
    for rank, keys in ((0, ["0", "1", "2"]), (1, ["3", "4", "5"])):
        with open(os.path.join(folder, f"answers.rank{rank}.jsonl"), encoding="utf-8") as f:
            assert [json.loads(line)["key"] for line in f] == keys
    records = read(os.path.join(folder, "answers.json"))
    metrics = read(os.path.join(folder, "results.json"))["metrics"]
    for split in ("adversarial", "popular", "random"):
        responses = [r["response"] for r in records if r["category"] == split]
        assert metrics[split] == pytest.approx(choice_metrics.pope_metrics(responses, ["yes", "no"]))
    assert metrics["overall_f1"] == pytest.approx(np.mean([metrics[s]["f1"] for s in metrics if s != "overall_f1"])
                                                  * 100)


def test_mmbench_dev_submission_and_circular_accuracy(tiny, tmp_path):
    make_mmbench_dev(tmp_path)
    out = str(tmp_path / "out")
    results = evaluate.main([tiny, "mmbench-dev-en", "--data-root", str(tmp_path), "--out-dir", out,
                             "--max-new-tokens", "3"])
    folder = run_dir(out, tiny, "mmbench-dev-en")
    records = read(os.path.join(folder, "answers.json"))
    assert records[0]["question"] == ("Look closely.\nWhat animal is shown?\nA. dog\nB. cat\nC. cow\n"
                                      "Answer with the option's letter from the given choices directly.")
    assert records[1]["question"] == "Which color?\nA. red\nB. blue\nAnswer with the option's letter from the " \
                                     "given choices directly."
    predictions = [choice_metrics.mmbench_option(r["response"], r["options"]) for r in records]
    rows = [(r["index"], p, r["gt"]) for r, p in zip(records, predictions)]
    assert results["metrics"]["circular_accuracy"] == pytest.approx(choice_metrics.circular_accuracy(rows))
    submission = os.path.join(folder, results["metrics"]["submission"])
    import pandas as pd

    sheet = pd.read_excel(submission) if submission.endswith(".xlsx") else pd.read_csv(submission, sep="\t")
    assert list(sheet.columns) == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert [str(p) for p in sheet["prediction"]] == predictions


def test_mvbench_video_and_frame_folder(tiny, tmp_path):
    make_mvbench(tmp_path)
    out = str(tmp_path / "out")
    results = evaluate.main([tiny, "mvbench", "--data-root", str(tmp_path), "--out-dir", out, "--num-segments", "2",
                             "--max-new-tokens", "3"])
    records = read(os.path.join(run_dir(out, tiny, "mvbench"), "answers.json"))
    assert [r["task_type"] for r in records] == ["Action Antonym", "Episodic Reasoning"]
    assert records[0]["question"].startswith("Frame1: <image>\nFrame2: <image>\nCarefully watch the video")
    assert records[0]["question"].endswith("\n\nQuestion: What happens?\nOptions:\n(A) sliding\n(B) jumping\n"
                                           "Only give the best option.")
    assert [r["gt"] for r in records] == ["(B) jumping", "(A) Ross"]
    hits = [choice_metrics.mvbench_correct(r["response"], r["gt"]) for r in records]
    assert results["metrics"]["Avg"] == pytest.approx(sum(hits) / 2 * 100)
    assert results["settings"]["num_segments"] == 2 and results["settings"]["max_num"] is None


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0]


def test_unknown_dataset(tmp_path):
    proc = run_script(["sh", str(EVAL_DIR / "evaluate.sh"), "ckpt", "vqa-nope"], cwd=tmp_path)
    assert_one_line_error(proc, "unknown dataset 'vqa-nope'", "vqa-textvqa-val")


def test_missing_dataset_folder(tmp_path):
    proc = run_script(["sh", str(EVAL_DIR / "evaluate.sh"), "ckpt", "scienceqa"], cwd=tmp_path)
    assert_one_line_error(proc, "missing folder data/scienceqa", "scienceqa_test_img.jsonl")


def test_missing_annotation_file_and_images(tmp_path):
    make_textvqa(tmp_path)
    os.remove(tmp_path / "data/textvqa/textvqa_val_annotations.json")
    command = [sys.executable, str(EVAL_DIR / "evaluate.py"), "ckpt", "vqa-textvqa-val", "--check"]
    assert_one_line_error(run_script(command, cwd=tmp_path), "missing file data/textvqa/textvqa_val_annotations.json")
    make_textvqa(tmp_path)
    os.remove(tmp_path / "data/textvqa/train_images/2.jpg")
    assert_one_line_error(run_script(command, cwd=tmp_path), "1 of the images/videos are missing", "2.jpg")


def test_usage_without_arguments(tmp_path):
    proc = run_script(["sh", str(EVAL_DIR / "evaluate.sh")], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("usage:")


# The dataset names of the official evaluate.sh that the InternVL2 evaluation guide and model cards run.
OFFICIAL_TARGETS = (
    "mme", "vqa-textvqa-val", "vqa-docvqa-val", "vqa-docvqa-test", "vqa-chartqa-test", "vqa-infovqa-val",
    "vqa-infovqa-test", "vqa-ai2d-test", "vqa-gqa-testdev", "vqa-vizwiz-val", "vqa-okvqa-val", "pope", "scienceqa",
    "mmbench-dev-en", "mmbench-dev-cn", "mmbench-test-en", "mmbench-test-cn", "mvbench",
    "ccbench-dev", "mmmu-dev", "mmmu-val", "mmmu-test", "mmvp", "seed", "tiny_lvlm", "mmvet", "llava-bench",
    "mathvista-testmini", "refcoco", "refcoco-val", "refcoco-testA", "refcoco-testB", "refcoco+-val", "refcoco+-testA",
    "refcoco+-testB", "refcocog-val", "refcocog-test", "vqa-chartqa-test-human", "vqa-chartqa-test-augmented",
    "vqa-vqav2-val", "vqa-vqav2-testdev", "vqa-ocrvqa-val", "vqa-ocrvqa-test")


@pytest.mark.parametrize("dataset", OFFICIAL_TARGETS)
def test_every_official_target_is_known_and_names_its_layout(tmp_path, dataset):
    with pytest.raises(FileNotFoundError, match=r"missing (file|folder) data/.*expected layout: data/"):
        evaluate.main(["ckpt", dataset, "--data-root", str(tmp_path), "--check"])
