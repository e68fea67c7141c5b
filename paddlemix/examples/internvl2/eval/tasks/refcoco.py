"""RefCOCO, RefCOCO+ and RefCOCOg grounding, as ``eval/refcoco/evaluate_grounding.py``.

Each line of ``data/refcoco/<split>.jsonl`` (the Qwen-VL conversion the official README downloads)
holds an image path relative to the working folder, the referring sentence ``sent``, the target
``bbox`` [x1, y1, x2, y2] in pixels and the image ``width``/``height``. The model is asked for the
sentence's box; the first box of the answer, rescaled from the 0-1000 grid, counts when its IoU
with the target is at least 0.5 (Precision@1). ``refcoco`` alone runs all eight splits, as the
official target does, and adds their mean (the "avg." of the InternVL2 grounding table).
"""
from typing import Dict, Sequence

from paddlemix.models.internvl2.grounding import box_iou, official_first_box

from ..datafiles import read_jsonl, resolve
from ..visuals import ImageFile
from .base import Item, Task

PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: <ref>{}</ref>"
# The official evaluate.sh names -> the annotation files.
SPLITS = {f"{name}-{split}": f"{name}_{split}.jsonl"
          for name, splits in (("refcoco", ("val", "testA", "testB")), ("refcoco+", ("val", "testA", "testB")),
                               ("refcocog", ("val", "test")))
          for split in splits}
ALL_SPLITS = "refcoco"


class RefCOCOTask(Task):
    folder = "data/refcoco"
    layout = "data/refcoco/{" + ", ".join(SPLITS.values()) + "} and the COCO images their lines name"
    max_new_tokens = 100

    def __init__(self, name: str, root: str):
        super().__init__(root)
        self.name = name

    def splits(self):
        return list(SPLITS) if self.name == ALL_SPLITS else [self.name]

    def load(self):
        items = []
        for split in self.splits():
            rows = read_jsonl(self.require(f"data/refcoco/{SPLITS[split]}"))
            prefix = f"{split}:" if self.name == ALL_SPLITS else ""
            items += [Item(f"{prefix}{index}", PROMPT.format(row["sent"]), ImageFile(resolve(self.root, row["image"])),
                           {"split": split, "bbox": row["bbox"], "width": row["width"], "height": row["height"]})
                      for index, row in enumerate(rows)]
        return items

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        if self.name != ALL_SPLITS:
            return precision_at_1(records)
        per_split = {split: precision_at_1([r for r in records if r["split"] == split]) for split in SPLITS}
        return {"average_precision_at_1": sum(m["precision_at_1"] for m in per_split.values()) / len(per_split),
                **per_split}


def precision_at_1(records: Sequence[Dict]) -> Dict:
    hits = [box_iou(official_first_box(r["response"], (r["width"], r["height"])), r["bbox"]) >= 0.5 for r in records]
    return {"precision_at_1": sum(hits) / len(hits) if hits else 0.0, "num_correct": sum(hits)}
