"""POPE object hallucination (adversarial, popular, random), as ``eval/pope/evaluate_pope.py``.

The questions of ``llava_pope_test.jsonl`` already end with the short-answer instruction. The
labels come from POPE's ``coco/coco_pope_<split>.json`` files and, as in ``eval_pope.py``, are
paired with the answers of that split in question-file order.
"""
import os
from typing import Dict, Sequence

from ..choice_metrics import pope_metrics
from ..datafiles import DatasetError, read_jsonl
from ..visuals import ImageFile
from .base import Item, Task, unique_keys

SPLITS = ("adversarial", "popular", "random")


class POPETask(Task):
    name = "pope"
    folder = "data/pope"
    layout = ("data/pope/{llava_pope_test.jsonl, val2014/, coco/coco_pope_adversarial.json, "
              "coco/coco_pope_popular.json, coco/coco_pope_random.json}")
    max_new_tokens = 100

    def load(self):
        rows = read_jsonl(self.require("data/pope/llava_pope_test.jsonl"))
        image_root = self.require("data/pope/val2014")
        self.labels = {s: [r["label"] for r in read_jsonl(self.require(f"data/pope/coco/coco_pope_{s}.json"))]
                       for s in SPLITS}
        keys = unique_keys([row["question_id"] for row in rows])
        return [Item(key, row["text"].strip(), ImageFile(os.path.join(image_root, row["image"])),
                     {"question_id": row["question_id"], "category": row["category"]})
                for key, row in zip(keys, rows)]

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        result = {}
        for split in SPLITS:
            responses = [r["response"] for r in records if r["category"] == split]
            if len(responses) != len(self.labels[split]):
                raise DatasetError(f"pope: {len(responses)} '{split}' questions in llava_pope_test.jsonl but "
                                   f"{len(self.labels[split])} labels in coco/coco_pope_{split}.json")
            result[split] = pope_metrics(responses, self.labels[split])
        result["overall_f1"] = sum(result[s]["f1"] for s in SPLITS) / len(SPLITS) * 100
        return result
