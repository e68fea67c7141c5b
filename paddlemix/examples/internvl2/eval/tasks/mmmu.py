"""MMMU dev/validation/test, as ``eval/mmmu/evaluate_mmmu.py`` and ``main_eval_only.py``.

The data is the MMMU/MMMU dataset repository as downloaded
(``huggingface-cli download MMMU/MMMU --repo-type dataset --local-dir data/MMMU``): one folder per
subject with ``<split>-*.parquet``. Prompt: the question, ``A. option`` lines for multiple choice,
then the instruction of the question type. With ``--dynamic`` the first image is doubled in size
and tiled up to ``--max-num``, the others are one tile each, all behind one ``<image>``; without
it only the first image, as one tile. Scores per subject, per domain and overall where the split
has answers; every split also writes the ``{id: answer}`` submission file of the MMMU server.
"""
import ast
import functools
import glob
import io
import os
from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np
from PIL import Image

from paddlemix.extras import require

from ..choice_metrics import mmbench_option
from ..datafiles import DatasetError, write_json
from ..mmmu_metrics import SUBJECTS, mmmu_scores
from ..visuals import PixelSettings, image_tiles
from .base import Item, Task
from .scienceqa import LETTER_PROMPT, multiple_choice_prompt
from .vqa import SHORT_ANSWER

SPLITS = {"mmmu-dev": "dev", "mmmu-val": "validation", "mmmu-test": "test"}
INSTRUCTIONS = {"multiple-choice": LETTER_PROMPT, "open": SHORT_ANSWER}
IMAGE_COLUMNS = [f"image_{i}" for i in range(1, 8)]
LETTERS = "ABCDEFGHIJKLM"


@functools.lru_cache(maxsize=1)
def _images_of(parquet: str):
    """The image columns of one subject's file; questions are asked in file order, so one file is kept."""
    return require("pandas", "eval").read_parquet(parquet, columns=IMAGE_COLUMNS)


@dataclass(frozen=True)
class ParquetImages:
    """The images of row ``row`` of an MMMU parquet file, read when the question is asked."""

    parquet: str
    row: int

    @property
    def files(self):
        return (self.parquet,)

    def pixels(self, settings: PixelSettings):
        cells = _images_of(self.parquet).iloc[self.row]
        images = [Image.open(io.BytesIO(cell["bytes"])).convert("RGB") for cell in cells if cell is not None]
        if not settings.dynamic:
            tiles = image_tiles(images[0], settings)
        else:
            first = images[0].resize((images[0].width * 2, images[0].height * 2), Image.BILINEAR)
            one_tile = PixelSettings(True, 1, settings.input_size, settings.use_thumbnail)
            tiles = np.concatenate([image_tiles(first, settings)] + [image_tiles(im, one_tile) for im in images[1:]])
        return tiles, [len(tiles)]  # all behind one <image>, as upstream


def _answer(value):
    """Open answers may be a Python list literal of accepted answers."""
    if isinstance(value, str) and value.startswith("["):
        try:
            return [str(v) for v in ast.literal_eval(value)]
        except (ValueError, SyntaxError):
            return value
    return value


class MMMUTask(Task):
    folder = "data/MMMU"
    layout = "data/MMMU/<Subject>/{dev,validation,test}-*.parquet (the MMMU/MMMU dataset repository)"
    max_new_tokens = 10

    def __init__(self, name: str, root: str):
        super().__init__(root)
        self.name = name
        self.split = SPLITS[name]

    def load(self):
        pandas = require("pandas", "eval")
        self.require("data/MMMU")
        items = []
        for subject in SUBJECTS:
            files = sorted(glob.glob(os.path.join(self.root, "data", "MMMU", subject, f"{self.split}-*.parquet")))
            if not files:
                raise DatasetError(f"{self.name}: no {subject}/{self.split}-*.parquet under data/MMMU; "
                                   f"expected layout: {self.layout}")
            for parquet in files:
                table = pandas.read_parquet(parquet, columns=["id", "question", "options", "answer",
                                                               "question_type"])
                for row, record in enumerate(table.itertuples(index=False)):
                    options = dict(zip(LETTERS, (o.strip() for o in ast.literal_eval(record.options))))
                    prompt = multiple_choice_prompt(record.question.strip(), None, options,
                                                    INSTRUCTIONS[record.question_type]).strip()
                    meta = {"id": record.id, "subject": subject, "question_type": record.question_type,
                            "options": options, "answer": _answer(record.answer)}
                    items.append(Item(record.id, prompt, ParquetImages(parquet, row), meta))
        return items

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        predictions = {r["id"]: mmbench_option(r["response"], r["options"]) if r["options"] else r["response"]
                       for r in records}
        submission = f"{self.name}-submission.json"
        write_json(os.path.join(out_dir, submission), predictions)
        if self.split == "test":  # the answers are not public
            return {"submission": submission}
        rows = [dict(r, prediction=predictions[r["id"]]) for r in records]
        return {"submission": submission, **mmmu_scores(rows)}
