"""Tiny LVLM-eHub, as ``eval/tiny_lvlm/evaluate_lvlm.py`` and ``calculate_score.py``.

``data/tiny_lvlm/updated_datasets/<task>/dataset.json`` lists ``image_path`` (inside the task
folder), ``question`` and ``gt_answers`` for each of the five capabilities. An answer is right when
a processed ground truth appears in it as whole words; the score is each task's accuracy and,
as upstream, their sum ("Overall", at most 5).
"""
import os
from typing import Dict, Sequence

from ..datafiles import DatasetError, read_json
from ..visuals import ImageFile
from ..vqa_metrics import tiny_lvlm_correct
from .base import Item, Task
from .vqa import SHORT_ANSWER

TASKS = ("Visual_Reasoning", "Visual_Perception", "Visual_Knowledge_Acquisition", "Visual_Commonsense",
         "Object_Hallucination")


class TinyLVLMTask(Task):
    name = "tiny_lvlm"
    folder = "data/tiny_lvlm/updated_datasets"
    layout = "data/tiny_lvlm/updated_datasets/{" + ", ".join(TASKS) + "}/{dataset.json, images}"
    max_new_tokens = 30

    def load(self):
        root = self.require(self.folder)
        found = sorted(name for name in os.listdir(root) if os.path.isfile(os.path.join(root, name, "dataset.json")))
        unknown = set(found) - set(TASKS)
        if not found or unknown:
            raise DatasetError(f"tiny_lvlm: expected the task folders {', '.join(TASKS)} with a dataset.json each, "
                               f"found {', '.join(found) or 'none'}")
        items = []
        for task in found:
            for index, row in enumerate(read_json(os.path.join(root, task, "dataset.json"))):
                items.append(Item(f"{task}/{index}", f"{row['question']} {SHORT_ANSWER}",
                                  ImageFile(os.path.join(root, task, row["image_path"])),
                                  {"task": task, "gt_answers": row["gt_answers"]}))
        return items

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        per_task = {}
        for r in records:
            per_task.setdefault(r["task"], []).append(tiny_lvlm_correct(r["response"], r["gt_answers"]))
        scores = {task: sum(hits) / len(hits) for task, hits in per_task.items()}
        return {**scores, "Overall": sum(scores.values())}
