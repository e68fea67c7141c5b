"""MM-Vet, as ``eval/mmvet/evaluate_mmvet.py``: answers for the MM-Vet evaluator, which scores them
with a GPT-4 judge. No judge runs here yet; the result names the submission file to score.

``data/mm-vet/llava-mm-vet.jsonl`` lines hold ``question_id``, ``image`` (under ``images/``) and
``text``; the prompt is the text followed by one space, exactly as upstream builds it.
"""
import os
from typing import Dict, Sequence

from ..datafiles import read_jsonl, write_json
from ..visuals import ImageFile
from .base import Item, Task, unique_keys

HOW_TO_SCORE = ("upload the submission to the MM-Vet evaluator (GPT-4 judge): "
                "https://huggingface.co/spaces/whyu/MM-Vet_Evaluator")


class MMVetTask(Task):
    name = "mmvet"
    folder = "data/mm-vet"
    layout = "data/mm-vet/{llava-mm-vet.jsonl, images/}"
    max_new_tokens = 1000

    def load(self):
        rows = read_jsonl(self.require("data/mm-vet/llava-mm-vet.jsonl"))
        keys = unique_keys([row["question_id"] for row in rows])
        return [Item(key, row["text"] + " ", ImageFile(os.path.join(self.root, "data", "mm-vet", "images",
                                                                     row["image"])),
                     {"question_id": row["question_id"]})
                for key, row in zip(keys, rows)]

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        name = f"{self.name}-submission.json"
        write_json(os.path.join(out_dir, name), {f"v1_{r['question_id']}": r["response"] for r in records})
        return {"submission": name, "how_to_score": HOW_TO_SCORE}
