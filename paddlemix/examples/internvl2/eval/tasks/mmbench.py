"""MMBench dev/test, English and Chinese, and CCBench dev, as ``eval/mmbench/evaluate_mmbench.py``.

The TSV is read with pandas exactly like the official script (so option values print the same
way in the prompt). The result is the official submission sheet (the TSV without hint,
category, source, image, comment and l2-category, plus a ``prediction`` column) for the
MMBench server; on dev, where answers are public, accuracy and CircularEval accuracy are
computed locally with exact letter matching.
"""
import logging
import os
from typing import Dict, Sequence

from paddlemix.extras import require

from ..choice_metrics import circular_accuracy, mmbench_option
from ..visuals import EncodedImage
from .base import Item, Task
from .scienceqa import LETTER_PROMPT, multiple_choice_prompt

logger = logging.getLogger(__name__)

FILES = {
    "mmbench-dev-en": ("mmbench_dev_20230712.tsv", "en"),
    "mmbench-dev-cn": ("mmbench_dev_cn_20231003.tsv", "cn"),
    "mmbench-test-en": ("mmbench_test_en_20231003.tsv", "en"),
    "mmbench-test-cn": ("mmbench_test_cn_20231003.tsv", "cn"),
    # CCBench (Chinese culture) runs through the same script with its own TSV.
    "ccbench-dev": ("CCBench_legacy.tsv", "cn"),
}
INSTRUCTIONS = {"en": LETTER_PROMPT, "cn": "请直接回答选项字母。"}
SUBMISSION_DROPPED = ["hint", "category", "source", "image", "comment", "l2-category"]


def _plain(value):
    """A pandas cell as a JSON-friendly Python value (None for NaN)."""
    if require("pandas", "eval").isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


class MMBenchTask(Task):
    folder = "data/mmbench"
    layout = "data/mmbench/{" + ", ".join(f for f, _ in FILES.values()) + "}"
    max_new_tokens = 100

    def __init__(self, name: str, root: str):
        super().__init__(root)
        self.name = name
        self.filename, self.language = FILES[name]

    def load(self):
        self.table = require("pandas", "eval").read_csv(self.require(f"data/mmbench/{self.filename}"), sep="\t")
        has_answer = "answer" in self.table.columns
        items = []
        for _, row in self.table.iterrows():
            options = {c: _plain(row[c]) for c in "ABCDE" if c in row and _plain(row[c]) is not None}
            hint = _plain(row["hint"]) if "hint" in row else None
            prompt = multiple_choice_prompt(row["question"], hint, options, INSTRUCTIONS[self.language])
            index = int(row["index"])
            meta = {"index": index, "options": options, "gt": _plain(row["answer"]) if has_answer else None}
            items.append(Item(str(index), prompt, EncodedImage(row["image"], f"{self.name} index {index}"), meta))
        return items

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        predictions = {r["index"]: mmbench_option(r["response"], r["options"]) for r in records}
        result = {"submission": self._write_submission(predictions, out_dir)}
        scored = [(r["index"], predictions[r["index"]], r["gt"]) for r in records if r["gt"] is not None]
        if scored:
            result["accuracy"] = sum(p == gt for _, p, gt in scored) / len(scored)
            result["circular_accuracy"] = circular_accuracy(scored)
        return result

    def _write_submission(self, predictions, out_dir):
        sheet = self.table.drop(columns=[c for c in SUBMISSION_DROPPED if c in self.table.columns])
        sheet.insert(min(6, len(sheet.columns)), "prediction", self.table["index"].map(predictions))
        stem = os.path.join(out_dir, os.path.splitext(self.filename)[0])
        try:
            import openpyxl  # noqa: F401  (the engine pandas needs for .xlsx)
        except ImportError:
            logger.warning("openpyxl is not installed: writing %s.tsv; the MMBench server wants the .xlsx "
                           "(pip install -e .[eval], then rerun to rewrite it from the saved answers)", stem)
            sheet.to_csv(stem + ".tsv", sep="\t", index=False)
            return os.path.basename(stem) + ".tsv"
        sheet.to_excel(stem + ".xlsx", index=False, engine="openpyxl")
        return os.path.basename(stem) + ".xlsx"
