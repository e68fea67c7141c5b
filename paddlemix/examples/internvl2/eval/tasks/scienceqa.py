"""ScienceQA (test questions with an image), as ``eval/scienceqa/evaluate_scienceqa.py``.

Prompt: optional hint, question, ``A. option`` lines, then the letter instruction; the answer
is mapped back to an option letter by the official post-processing and scored by accuracy.
"""
from typing import Dict, Sequence

from ..choice_metrics import scienceqa_option
from ..datafiles import read_jsonl, resolve
from ..visuals import ImageFile
from .base import Item, Task

LETTER_PROMPT = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDE"


def multiple_choice_prompt(question: str, hint, options: Dict[str, str], instruction: str) -> str:
    """``hint\\nquestion\\nA. ...\\nB. ...\\ninstruction``, the layout of the official choice prompts."""
    if hint is not None:
        question = hint + "\n" + question
    for letter, text in options.items():
        question += f"\n{letter}. {text}"
    return question + "\n" + instruction


class ScienceQATask(Task):
    name = "scienceqa"
    folder = "data/scienceqa"
    layout = "data/scienceqa/{scienceqa_test_img.jsonl, images/}"
    max_new_tokens = 100

    def load(self):
        items = []
        for position, row in enumerate(read_jsonl(self.require("data/scienceqa/scienceqa_test_img.jsonl"))):
            options = dict(zip(LETTERS, row["choices"]))
            prompt = multiple_choice_prompt(row["question"], row["hint"] or None, options, LETTER_PROMPT).strip()
            meta = {"options": options, "gt": LETTERS[row["answer"]]}
            items.append(Item(str(position), prompt, ImageFile(resolve(self.root, row["image"])), meta))
        return items

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        hits = [scienceqa_option(r["response"], r["options"]) == r["gt"] for r in records]
        return {"accuracy": sum(hits) / len(hits)}
