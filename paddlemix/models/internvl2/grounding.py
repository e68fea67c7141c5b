"""Grounding answers: `<ref>the man</ref><box>[[x1, y1, x2, y2]]</box>` to boxes in pixels, and drawn.

InternVL2 answers grounding prompts with coordinates on a 0-1000 grid over the image. The official
RefCOCO scorer (`internvl_chat/eval/refcoco/evaluate_grounding.py`) takes the first `[x1, y1, x2, y2]`
of the answer, reads it as 0-1000 when its four numbers sum to 4 or more and as 0-1 otherwise, and
scales x by the width and y by the height. The same rule serves users here, for every box.
"""
import os
import re
from typing import List, Optional, Sequence, Tuple

# The official scorer's pattern: the first bracketed group of four comma-separated values.
OFFICIAL_BOX_PATTERN = re.compile(r"\[*\[(.*?),(.*?),(.*?),(.*?)\]\]*")
_REF_OR_BOX = re.compile(r"<ref>(.*?)</ref>|<box>(.*?)</box>", re.S)
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")


def to_pixels(box: Sequence[float], image_size: Tuple[int, int]) -> List[float]:
    """[x1, y1, x2, y2] from the model's grid (0-1000, or 0-1 when the four sum to less than 4) to pixels."""
    width, height = image_size
    scale = 1000.0 if sum(box) >= 4 else 1.0
    return [box[0] / scale * width, box[1] / scale * height, box[2] / scale * width, box[3] / scale * height]


def parse_boxes(text: str, image_size: Tuple[int, int]) -> List[Tuple[Optional[str], List[float]]]:
    """Every box of an answer as (phrase, [x1, y1, x2, y2] in pixels); never raises on model text.

    A `<box>` takes the phrase of the `<ref>` just before it (None when there is none); one `<box>`
    may hold several boxes (`[[...], [...]]`). Boxes that do not parse as four numbers are skipped.
    """
    found, phrase = [], None
    for match in _REF_OR_BOX.finditer(text or ""):
        if match.group(1) is not None:
            phrase = match.group(1).strip()
            continue
        for numbers in _BOX.findall(match.group(2)):
            found.append((phrase, to_pixels([float(n) for n in numbers], image_size)))
        phrase = None
    return found


def official_first_box(text: str, image_size: Tuple[int, int]) -> List[float]:
    """The box the official RefCOCO scorer reads from an answer, in pixels; [0, 0, 0, 0] when none parses."""
    match = OFFICIAL_BOX_PATTERN.search(text or "")
    try:
        box = [float(value) for value in match.groups()]
    except (AttributeError, ValueError):
        return [0.0, 0.0, 0.0, 0.0]
    return to_pixels(box, image_size)


def _area(box):
    return (box[2] - box[0]) * (box[3] - box[1])


def box_iou(first: Sequence[float], second: Sequence[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes, as torchvision's box_iou computes it."""
    width = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    inter = width * height
    union = _area(first) + _area(second) - inter
    return inter / union if union else 0.0


COLORS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def draw_boxes(image, boxes: Sequence[Tuple[Optional[str], Sequence[float]]]):
    """A copy of a PIL image with each (phrase, box) drawn, the phrase above its box; boxes are clipped."""
    from PIL import ImageDraw

    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    line = max(2, round(min(out.size) / 200))
    for index, (phrase, box) in enumerate(boxes):
        color = COLORS[index % len(COLORS)]
        x1, y1, x2, y2 = (min(max(v, 0), limit - 1) for v, limit in zip(box, out.size * 2))
        draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=color, width=line)
        if phrase:
            left, top = min(x1, x2), max(min(y1, y2) - 12 - line, 0)
            draw.rectangle(draw.textbbox((left, top), phrase), fill=color)
            draw.text((left, top), phrase, fill=(255, 255, 255))
    return out


def save_image_atomically(image, path: str):
    """Write through a temporary name and rename, so a failed write never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp")
    try:
        image.save(tmp, format=image_format(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def image_format(path: str) -> str:
    """Pillow's format name for a file name's extension; ValueError for one it cannot write."""
    from PIL import Image

    extension = os.path.splitext(path)[1].lower()
    formats = Image.registered_extensions()
    if extension not in formats:
        raise ValueError(f"cannot write '{path}': unknown image extension {extension or '(none)'!r}; "
                         "use .jpg or .png")
    return formats[extension]
