"""SEED-Bench (image part), as ``eval/seed/evaluate_seed.py`` and ``calculation.py``.

``data/SEED/seed.jsonl`` lines hold the whole prompt (``text``: question, options and the letter
instruction), ``image`` relative to ``data/SEED/``, ``answer`` and ``question_id``. Acc@1 is the
official exact comparison of the answer with the letter. With SEED-Bench's own ``SEED-Bench.json``
beside it, the per-type accuracies of ``calculation.py`` (first character of the answer) follow.
"""
import os
from typing import Dict, Sequence

from ..datafiles import read_json, read_jsonl
from ..visuals import ImageFile
from .base import Item, Task, unique_keys

IMAGE_TYPES = range(1, 10)  # SEED-Bench question types 1-9 are about images, 10-12 about videos


class SEEDTask(Task):
    name = "seed"
    folder = "data/SEED"
    layout = "data/SEED/{seed.jsonl, SEED-Bench-image/, optionally SEED-Bench.json}"
    max_new_tokens = 100

    def load(self):
        rows = read_jsonl(self.require("data/SEED/seed.jsonl"))
        keys = unique_keys([row["question_id"] for row in rows])
        return [Item(key, row["text"], ImageFile(os.path.join(self.root, "data", "SEED", row["image"])),
                     {"question_id": row["question_id"], "gt": row.get("answer")})
                for key, row in zip(keys, rows)]

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        result = {"accuracy": sum(r["response"] == r["gt"] for r in records) / len(records)}
        bench = os.path.join(self.root, "data", "SEED", "SEED-Bench.json")
        if os.path.isfile(bench):
            result.update(self._per_type(records, read_json(bench)))
        return result

    @staticmethod
    def _per_type(records, bench):
        """calculation.py: per question type and over the image types, in %, the first character compared."""
        names = {type_id: name for name, type_id in bench["question_type"].items()}
        questions = {str(q["question_id"]): q for q in bench["questions"]}
        per_type = {}
        for r in records:
            question = questions[str(r["question_id"])]
            pred = r["response"] if len(r["response"]) == 1 else r["response"][:1]
            per_type.setdefault(question["question_type_id"], []).append(pred == question["answer"])
        image = [hit for type_id, hits in per_type.items() if type_id in IMAGE_TYPES for hit in hits]
        return {"per_type": {names[t]: 100 * sum(h) / len(h) for t, h in sorted(per_type.items())},
                "image_accuracy": 100 * sum(image) / len(image) if image else None}
