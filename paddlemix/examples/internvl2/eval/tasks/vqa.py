"""Open-ended VQA benchmarks run by the official ``eval/vqa/evaluate_vqa.py``.

The question files are the official converted jsonl files (``image``, ``question``,
``question_id``, ``answer``); the prompt suffix, max_new_tokens and scorer of each dataset are
the official ones. Test splits without public answers produce the server submission file.
"""
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from .. import vqa_metrics
from ..datafiles import DatasetError, read_json, read_jsonl, resolve, write_json
from ..visuals import ImageFile
from .base import Item, Task, unique_keys

SHORT_ANSWER = "Answer the question using a single word or phrase."
VIZWIZ_PROMPT = "When the provided information is insufficient, respond with 'Unanswerable'. " + SHORT_ANSWER


@dataclass(frozen=True)
class VQASpec:
    folder: str
    splits: Tuple[Tuple[str, str], ...]  # (split name, question jsonl)
    metric: Optional[str]                # vqa_score | anls | relaxed_accuracy | accuracy | gqa | None (test split)
    layout: str
    max_new_tokens: int = 10
    prompt: str = SHORT_ANSWER
    annotation: Optional[str] = None
    submission: Optional[str] = None     # vizwiz | docvqa | vqav2: format of the server file for test splits


TEXTVQA_LAYOUT = ("data/textvqa/{textvqa_val.jsonl, textvqa_val_llava.jsonl, textvqa_val_annotations.json, "
                  "train_images/}")
CHARTQA_LAYOUT = "data/chartqa/{test_human.jsonl, test_augmented.jsonl, ChartQA Dataset/test/png/}"
VQAV2_LAYOUT = ("data/vqav2/{vqav2_val.jsonl, v2_mscoco_val2014_annotations.json, vqav2_testdev.jsonl} and the "
                "COCO images their lines name")
OCRVQA_LAYOUT = "data/ocrvqa/{ocrvqa_val.jsonl, ocrvqa_test.jsonl, images/}"
SPECS = {
    "vqa-textvqa-val": VQASpec("data/textvqa", (("val", "data/textvqa/textvqa_val.jsonl"),), "vqa_score",
                               TEXTVQA_LAYOUT, annotation="data/textvqa/textvqa_val_annotations.json"),
    "vqa-textvqa-val-ocr": VQASpec("data/textvqa", (("val", "data/textvqa/textvqa_val_llava.jsonl"),), "vqa_score",
                                   TEXTVQA_LAYOUT, annotation="data/textvqa/textvqa_val_annotations.json"),
    "vqa-okvqa-val": VQASpec("data/okvqa", (("val", "data/okvqa/okvqa_val.jsonl"),), "vqa_score",
                             "data/okvqa/{okvqa_val.jsonl, mscoco_val2014_annotations.json, val2014/}",
                             annotation="data/okvqa/mscoco_val2014_annotations.json"),
    "vqa-vizwiz-val": VQASpec("data/vizwiz", (("val", "data/vizwiz/vizwiz_val.jsonl"),), "vqa_score",
                              "data/vizwiz/{vizwiz_val.jsonl, vizwiz_val_annotations.json, val/}",
                              prompt=VIZWIZ_PROMPT, annotation="data/vizwiz/vizwiz_val_annotations.json"),
    "vqa-vizwiz-test": VQASpec("data/vizwiz", (("test", "data/vizwiz/vizwiz_test.jsonl"),), None,
                               "data/vizwiz/{vizwiz_test.jsonl, test/}", prompt=VIZWIZ_PROMPT, submission="vizwiz"),
    "vqa-docvqa-val": VQASpec("data/docvqa", (("val", "data/docvqa/val.jsonl"),), "anls",
                              "data/docvqa/{val.jsonl, val/val_v1.0.json, val/documents/}", max_new_tokens=100,
                              annotation="data/docvqa/val/val_v1.0.json"),
    "vqa-docvqa-test": VQASpec("data/docvqa", (("test", "data/docvqa/test.jsonl"),), None,
                               "data/docvqa/{test.jsonl, test/documents/}", max_new_tokens=100, submission="docvqa"),
    "vqa-chartqa-test": VQASpec("data/chartqa", (("test_human", "data/chartqa/test_human.jsonl"),
                                                 ("test_augmented", "data/chartqa/test_augmented.jsonl")),
                                "relaxed_accuracy", CHARTQA_LAYOUT, max_new_tokens=100),
    "vqa-chartqa-test-human": VQASpec("data/chartqa", (("test_human", "data/chartqa/test_human.jsonl"),),
                                      "relaxed_accuracy", CHARTQA_LAYOUT, max_new_tokens=100),
    "vqa-chartqa-test-augmented": VQASpec("data/chartqa", (("test_augmented", "data/chartqa/test_augmented.jsonl"),),
                                          "relaxed_accuracy", CHARTQA_LAYOUT, max_new_tokens=100),
    "vqa-vqav2-val": VQASpec("data/vqav2", (("val", "data/vqav2/vqav2_val.jsonl"),), "vqa_score", VQAV2_LAYOUT,
                             annotation="data/vqav2/v2_mscoco_val2014_annotations.json"),
    "vqa-vqav2-testdev": VQASpec("data/vqav2", (("testdev", "data/vqav2/vqav2_testdev.jsonl"),), None, VQAV2_LAYOUT,
                                 submission="vqav2"),
    "vqa-ocrvqa-val": VQASpec("data/ocrvqa", (("val", "data/ocrvqa/ocrvqa_val.jsonl"),), "accuracy", OCRVQA_LAYOUT,
                              max_new_tokens=100),
    "vqa-ocrvqa-test": VQASpec("data/ocrvqa", (("test", "data/ocrvqa/ocrvqa_test.jsonl"),), "accuracy",
                               OCRVQA_LAYOUT, max_new_tokens=100),
    # The AI2D questions already carry their options and instruction (VLMEvalKit format): no suffix.
    "vqa-ai2d-test": VQASpec("data/ai2diagram", (("test", "data/ai2diagram/test_vlmevalkit.jsonl"),), "accuracy",
                             "data/ai2diagram/{test_vlmevalkit.jsonl, AI2D_TEST/}", prompt=""),
    "vqa-infovqa-val": VQASpec("data/infographicsvqa", (("val", "data/infographicsvqa/val.jsonl"),), "anls",
                               "data/infographicsvqa/{val.jsonl, infographicsVQA_val_v1.0_withQT.json, "
                               "infographicsvqa_images/}", max_new_tokens=100,
                               annotation="data/infographicsvqa/infographicsVQA_val_v1.0_withQT.json"),
    "vqa-infovqa-test": VQASpec("data/infographicsvqa", (("test", "data/infographicsvqa/test.jsonl"),), None,
                                "data/infographicsvqa/{test.jsonl, infographicsvqa_images/}", max_new_tokens=100,
                                submission="docvqa"),
    "vqa-gqa-testdev": VQASpec("data/gqa", (("testdev", "data/gqa/llava_gqa_testdev_balanced_qwen_format.jsonl"),),
                               "gqa", "data/gqa/{llava_gqa_testdev_balanced_qwen_format.jsonl, "
                               "testdev_balanced_questions.json, images/}",
                               annotation="data/gqa/testdev_balanced_questions.json"),
}


class VQATask(Task):
    def __init__(self, name: str, root: str):
        super().__init__(root)
        self.name = name
        self.spec = SPECS[name]
        self.folder = self.spec.folder
        self.layout = self.spec.layout
        self.max_new_tokens = self.spec.max_new_tokens

    def load(self):
        if self.spec.annotation:
            self.require(self.spec.annotation)
        multi_split = len(self.spec.splits) > 1
        items = []
        for split, relpath in self.spec.splits:
            rows = read_jsonl(self.require(relpath))
            ids = [row.get("question_id", position) for position, row in enumerate(rows)]
            keys = unique_keys(ids, prefix=f"{split}/" if multi_split else "")
            for key, qid, row in zip(keys, ids, rows):
                question = row["question"] + (" " + self.spec.prompt if self.spec.prompt else "")
                meta = {"split": split, "question_id": qid, "annotation": row.get("answer")}
                items.append(Item(key, question, ImageFile(resolve(self.root, row["image"])), meta))
        return items

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        metric = self.spec.metric
        if metric is None:
            return {"submission": self._write_submission(records, out_dir)}
        if metric == "vqa_score":
            return {"accuracy": self._vqa_score(records)}
        if metric == "anls":
            return {"anls": self._anls(records)}
        if metric == "relaxed_accuracy":
            splits = {}
            for split, _ in self.spec.splits:
                rows = [r for r in records if r["split"] == split]
                splits[split] = vqa_metrics.relaxed_accuracy([r["response"] for r in rows],
                                                             [r["annotation"] for r in rows])
            return {"relaxed_accuracy": sum(splits.values()) / len(splits), **splits}
        if metric == "accuracy":
            return {"accuracy": vqa_metrics.exact_match_accuracy([r["response"] for r in records],
                                                                  [r["annotation"] for r in records])}
        return {"accuracy": self._gqa(records)}

    def _vqa_score(self, records):
        annotations = read_json(resolve(self.root, self.spec.annotation))["annotations"]
        gt = {item["question_id"]: [a["answer"] for a in item["answers"]] for item in annotations}
        missing = [r["question_id"] for r in records if r["question_id"] not in gt]
        if missing:
            raise DatasetError(f"{self.spec.annotation} has no answers for question {missing[0]} "
                               f"({len(missing)} questions)")
        scores = [vqa_metrics.vqa_soft_score(r["response"], gt[r["question_id"]]) for r in records]
        return sum(scores) / len(scores)

    def _anls(self, records):
        """Averaged over the ground-truth questions, all of which must have been answered."""
        answers = {int(r["question_id"]): r["response"] for r in records}
        total, questions = 0.0, read_json(resolve(self.root, self.spec.annotation))["data"]
        for question in questions:
            qid = int(question["questionId"])
            if qid not in answers:
                raise DatasetError(f"no answer for questionId {qid} of {self.spec.annotation}")
            total += vqa_metrics.anls_score(answers[qid], question["answers"])
        return total / len(questions) if questions else 0

    def _gqa(self, records):
        questions = read_json(resolve(self.root, self.spec.annotation))
        predictions = {str(r["question_id"]): vqa_metrics.gqa_prediction(r["response"]) for r in records}
        return vqa_metrics.gqa_accuracy(predictions, questions)

    def _write_submission(self, records, out_dir):
        if self.spec.submission == "vizwiz":
            rows = [{"image": str(r["question_id"]).replace("data/vizwiz/test/", ""), "answer": r["response"]}
                    for r in records]
        elif self.spec.submission == "vqav2":  # the EvalAI result format
            rows = [{"question_id": r["question_id"], "answer": r["response"]} for r in records]
        else:
            rows = [{"questionId": r["question_id"], "answer": r["response"]} for r in records]
        name = f"{self.name}-submission.json"
        write_json(os.path.join(out_dir, name), rows)
        return name
