"""What the InternVL2 release publishes per model size, shown beside a run of that released checkpoint.

Numbers are the expected outputs printed by the official guide for the upstream ``evaluate.sh``
(https://internvl.readthedocs.io/en/latest/internvl2.0/evaluation.html), except the grounding rows
(the InternVL2 introduction page's table) and the rows marked VLMEvalKit (the model cards'). Each
row also says how ``eval/README.md`` labels it; a test keeps that table and this one equal.
"""
import os
import re
from typing import Dict, NamedTuple, Optional, Tuple

SIZES = ("1B", "2B", "4B", "8B", "26B", "40B", "76B")
SOURCE = "InternVL2 documentation (eval/README.md, 'Published results to compare with')"


class Published(NamedTuple):
    dataset: str
    metric: str    # as evaluate.py prints it; "server" for scores only the benchmark's server computes
    scale: float   # published value / scale = evaluate.py's unit (100 where evaluate.py prints 0-1)
    label: str     # the row's first cell in eval/README.md
    values: Tuple[Optional[float], ...]  # per SIZES, as published


def _refcoco(split, *values):
    return Published(split, "precision_at_1", 100, f"`{split}`", values)


PUBLISHED = (
    Published("mme", "Perception", 1, "`mme`: Perception", (1346.2, 1439.7, 1532.3, 1648.1, 1720.0, 1715.4, 1731.1)),
    Published("mme", "Cognition", 1, "`mme`: Cognition", (448.2, 437.1, 531.8, 562.1, 540.7, 599.6, 683.6)),
    Published("vqa-okvqa-val", "accuracy", 100, "`vqa-okvqa-val`",
              (48.51, 53.16, 60.08, 62.90, 65.95, 66.43, 68.34)),
    Published("vqa-textvqa-val", "accuracy", 100, "`vqa-textvqa-val`",
              (70.52, 73.36, 74.37, 77.37, 82.28, 83.02, 84.41)),
    Published("vqa-vizwiz-val", "accuracy", 100, "`vqa-vizwiz-val`",
              (53.07, 47.38, 62.21, 62.91, 68.39, 65.22, 67.67)),
    Published("vqa-chartqa-test", "relaxed_accuracy", 100, "`vqa-chartqa-test`: mean of the two splits",
              (72.88, 76.24, 81.48, 83.28, 84.88, 86.20, 88.40)),
    Published("vqa-chartqa-test-human", "relaxed_accuracy", 100, "`vqa-chartqa-test-human`",
              (53.92, 59.52, 69.92, 72.88, 75.28, 77.20, 81.60)),
    Published("vqa-chartqa-test-augmented", "relaxed_accuracy", 100, "`vqa-chartqa-test-augmented`",
              (91.84, 92.96, 93.04, 93.68, 94.48, 95.20, 95.20)),
    Published("vqa-docvqa-val", "anls", 100, "`vqa-docvqa-val`: ANLS",
              (79.99, 85.90, 88.09, 90.81, 92.12, 93.73, 94.17)),
    Published("vqa-docvqa-test", "server", 100, "`vqa-docvqa-test`: ANLS from the server",
              (81.70, 86.90, 89.20, 91.60, 92.90, 93.90, 94.10)),
    Published("vqa-ai2d-test", "accuracy", 100, "`vqa-ai2d-test`", (64.09, 74.09, 78.89, 83.78, 84.46, 87.11, 87.63)),
    Published("vqa-infovqa-val", "anls", 100, "`vqa-infovqa-val`: ANLS",
              (50.18, 57.66, 66.25, 72.60, 76.01, 78.51, 80.21)),
    Published("vqa-infovqa-test", "server", 100, "`vqa-infovqa-test`: ANLS from the server",
              (50.90, 58.90, 67.00, 74.80, 75.90, 78.70, 82.00)),
    Published("vqa-gqa-testdev", "accuracy", 100, "`vqa-gqa-testdev`",
              (59.77, 61.03, 62.07, 63.23, 64.89, 64.89, 65.22)),
    Published("pope", "overall_f1", 1, "`pope`: overall F1", (87.3, 88.3, 87.2, 86.9, 88.0, 88.4, 89.0)),
    Published("mmbench-test-en", "server", 1, "`mmbench-test-en`: from the server",
              (65.4, 73.2, 78.6, 81.7, 83.4, 86.8, 86.5)),
    Published("mmbench-test-cn", "server", 1, "`mmbench-test-cn`: from the server",
              (60.7, 70.9, 73.9, 81.2, 82.0, 86.5, 86.3)),
    Published("ccbench-dev", "server", 1, "`ccbench-dev`: from the server", (75.7, 74.7, 66.5, 75.9, 73.5, 80.6, 81.0)),
    Published("mmmu-val", "overall.acc", 100, "`mmmu-val`: overall", (35.4, 34.3, 47.0, 49.3, 48.3, 53.9, 55.2)),
    Published("seed", "image_accuracy", 1, "`seed`: image accuracy", (65.62, 71.55, 73.67, 76.15, 76.79, 78.15, 78.17)),
    Published("mmvp", "accuracy", 100, "`mmvp`: pair accuracy", (20.00, 35.33, 40.67, 51.33, 54.67, 58.67, 52.67)),
    Published("tiny_lvlm", "Overall", 1, "`tiny_lvlm`: Overall (sum of five, at most 5)",
              (3.2538, 3.2946, 3.3673, 3.4177, 3.5793, 3.5841, 3.6292)),
    Published("mvbench", "Avg", 1, "`mvbench`: Avg", (57.9, 60.2, 63.7, 66.4, 67.5, 72.5, 69.6)),
    Published("mmvet", "total", 1, "`mmvet`: total, GPT-4-0613 judge", (37.8, 44.6, 55.7, 60.0, 64.2, 68.5, 69.8)),
    Published("mathvista-testmini", "accuracy", 1, "`mathvista-testmini` † (VLMEvalKit, GPT answer extraction)",
              (37.7, 46.4, 58.7, 58.3, 59.4, 63.7, 65.5)),
    Published("llava-bench", "relative_score", 1, "`llava-bench` † (VLMEvalKit, GPT-4-Turbo judge)",
              (51.6, 62.5, 68.2, 73.2, 92.3, 100.5, 99.3)),
    _refcoco("refcoco-val", 83.6, 82.3, 88.5, 87.1, 91.2, 93.0, 92.2),
    _refcoco("refcoco-testA", 88.7, 88.2, 91.2, 91.1, 93.3, 94.7, 94.8),
    _refcoco("refcoco-testB", 79.8, 75.9, 83.9, 80.7, 87.4, 89.2, 88.4),
    _refcoco("refcoco+-val", 76.0, 73.5, 81.2, 79.8, 86.8, 88.5, 88.8),
    _refcoco("refcoco+-testA", 83.6, 82.8, 87.2, 87.9, 91.0, 92.8, 93.1),
    _refcoco("refcoco+-testB", 67.7, 63.3, 73.8, 71.4, 81.2, 83.6, 82.8),
    _refcoco("refcocog-val", 80.2, 77.6, 84.6, 82.7, 88.5, 90.3, 89.5),
    _refcoco("refcocog-test", 79.9, 78.3, 84.6, 82.7, 88.6, 90.6, 90.3),
    Published("refcoco", "average_precision_at_1", 100, "`refcoco`: average of the eight",
              (79.9, 77.7, 84.4, 82.9, 88.5, 90.3, 90.0)),
)
_RELEASED = re.compile(r"InternVL2-(1B|2B|4B|8B|26B|40B)|InternVL2-Llama3-(76B)", re.IGNORECASE)


def released_size(checkpoint: str) -> Optional[str]:
    """"8B" for OpenGVLab/InternVL2-8B or a local folder of that name; None for any other checkpoint."""
    match = _RELEASED.fullmatch(os.path.basename(os.path.normpath(checkpoint)))
    return (match.group(1) or match.group(2)).upper() if match else None


def published_scores(checkpoint: str, dataset: str) -> Dict[str, float]:
    """``{metric: value in evaluate.py's unit}`` published for this released checkpoint on ``dataset``."""
    size = released_size(checkpoint)
    if size is None:
        return {}
    column = SIZES.index(size)
    return {row.metric: round(row.values[column] / row.scale, 6) for row in PUBLISHED
            if row.dataset == dataset and row.values[column] is not None}
