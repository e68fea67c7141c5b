"""RefCOCO, RefCOCO+ and RefCOCOg grounding, as ``eval/refcoco/evaluate_grounding.py``.

Each line of ``data/refcoco/<split>.jsonl`` (the Qwen-VL conversion the official README downloads)
holds an image path relative to the working folder, the referring sentence ``sent``, the target
``bbox`` [x1, y1, x2, y2] in pixels and the image ``width``/``height``. The model is asked for the
sentence's box; the first box of the answer, rescaled from the 0-1000 grid, counts when its IoU
with the target is at least 0.5 (Precision@1).
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


class RefCOCOTask(Task):
    folder = "data/refcoco"
    layout = "data/refcoco/{" + ", ".join(SPLITS.values()) + "} and the COCO images their lines name"
    max_new_tokens = 100

    def __init__(self, name: str, root: str):
        super().__init__(root)
        self.name = name

    def load(self):
        rows = read_jsonl(self.require(f"data/refcoco/{SPLITS[self.name]}"))
        return [Item(str(index), PROMPT.format(row["sent"]), ImageFile(resolve(self.root, row["image"])),
                     {"bbox": row["bbox"], "width": row["width"], "height": row["height"]})
                for index, row in enumerate(rows)]

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        hits = [box_iou(official_first_box(r["response"], (r["width"], r["height"])), r["bbox"]) >= 0.5
                for r in records]
        return {"precision_at_1": sum(hits) / len(hits) if hits else 0.0, "num_correct": sum(hits)}
