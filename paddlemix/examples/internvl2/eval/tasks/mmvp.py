"""MMVP, as ``eval/mmvp/evaluate_mmvp.py``: 150 image pairs, a pair counts only when both answers are right.

``data/MMVP/Questions.csv`` has ``Index`` (the release spells it ``lndex``), ``Question``, ``Options``
(``(a) ... (b) ...``) and ``Correct Answer`` (``(a)``); the images are ``MMVP Images/<Index>.jpg``.
Consecutive questions form a pair, in file order.
"""
import csv
import os
from typing import Dict, Sequence

from ..choice_metrics import mmbench_option, mmvp_pair_accuracy
from ..visuals import ImageFile
from .base import Item, Task
from .scienceqa import LETTER_PROMPT, multiple_choice_prompt


def _options(text: str) -> Dict[str, str]:
    first, _, second = text.partition("(b)")
    return {"A": first.replace("(a)", "").strip(), "B": second.strip()}


class MMVPTask(Task):
    name = "mmvp"
    folder = "data/MMVP"
    layout = "data/MMVP/{Questions.csv, MMVP Images/<Index>.jpg}"
    max_new_tokens = 100

    def load(self):
        with open(self.require("data/MMVP/Questions.csv"), encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        items = []
        for row in rows:
            index = row["lndex"] if "lndex" in row else row["Index"]
            options = _options(row["Options"])
            answer = row["Correct Answer"]
            for letter in "abcd":
                answer = answer.replace(f"({letter})", letter.upper())
            prompt = multiple_choice_prompt(row["Question"], None, options, LETTER_PROMPT)
            image = ImageFile(os.path.join(self.root, "data", "MMVP", "MMVP Images", f"{index}.jpg"))
            items.append(Item(str(index), prompt, image, {"options": options, "gt": answer}))
        return items

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        # The official post-processing is MMBench's (first letter, else the option text found).
        correct = [mmbench_option(r["response"], r["options"]) == r["gt"] for r in records]
        return {"accuracy": mmvp_pair_accuracy(correct), "question_accuracy": sum(correct) / len(correct)}
