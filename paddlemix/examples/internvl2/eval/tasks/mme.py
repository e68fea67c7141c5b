"""MME: 14 yes/no subtasks, two questions per image, run as the official ``eval/mme/eval.py``.

Questions come from the per-image ``.txt`` files of ``MME_Benchmark_release_version``
(``question<TAB>Yes|No`` lines), in the flat layout of OpenGVLab's zip (images and .txt side
by side) or the original one (``images/`` + ``questions_answers_YN/``). The answers are also
written as ``mme/<subtask>.txt`` in the official ``Your_Results`` format, which the official
``calculation.py`` reads.
"""
import logging
import os
from typing import Dict, Sequence

from ..choice_metrics import MME_TASKS, mme_clean_response, mme_scores
from ..datafiles import DatasetError
from ..visuals import ImageFile
from .base import Item, Task
from .vqa import SHORT_ANSWER

logger = logging.getLogger(__name__)

MME_ROOT = "data/mme/MME_Benchmark_release_version"
IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


def _find_image(folder: str, stem: str):
    for extension in IMAGE_EXTENSIONS:
        path = os.path.join(folder, stem + extension)
        if os.path.isfile(path):
            return path
    return None


class MMETask(Task):
    name = "mme"
    folder = MME_ROOT
    layout = (f"{MME_ROOT}/<subtask>/ with <image>.jpg|png and <image>.txt (or images/ and questions_answers_YN/) "
              f"for the 14 subtasks {', '.join(MME_TASKS['Perception'] + MME_TASKS['Cognition'])}")
    max_new_tokens = 20

    def load(self):
        items = []
        for subtask in MME_TASKS["Perception"] + MME_TASKS["Cognition"]:
            items.extend(self._load_subtask(subtask))
        logger.info("MME: %d questions (the full benchmark has 2374)", len(items))
        return items

    def _load_subtask(self, subtask):
        folder = self.require(f"{MME_ROOT}/{subtask}")
        qa_folder, image_folder = folder, folder
        if os.path.isdir(os.path.join(folder, "questions_answers_YN")):
            qa_folder, image_folder = os.path.join(folder, "questions_answers_YN"), os.path.join(folder, "images")
        items, skipped = [], 0
        for name in sorted(n for n in os.listdir(qa_folder) if n.endswith(".txt")):
            stem = name[:-len(".txt")]
            image = _find_image(image_folder, stem)
            if image is None:
                skipped += 1  # the flat zip keeps every artwork .txt but only the benchmark's images
                continue
            with open(os.path.join(qa_folder, name), encoding="utf-8") as f:
                lines = [line.rstrip("\n") for line in f if line.strip()]
            for number, line in enumerate(lines):
                question, _, answer = line.partition("\t")
                if answer.strip() not in ("Yes", "No"):
                    raise DatasetError(f"{os.path.join(qa_folder, name)}:{number + 1}: expected "
                                       f"'question<TAB>Yes|No', got {line!r}")
                meta = {"subtask": subtask, "image": os.path.basename(image), "gt": answer.strip()}
                items.append(Item(f"{subtask}/{stem}/{number}", f"{question} {SHORT_ANSWER}", ImageFile(image), meta))
        if skipped:
            logger.info("MME %s: %d question files without an image skipped", subtask, skipped)
        if not items:
            raise DatasetError(f"mme: no questions with images in {qa_folder}; expected layout: {self.layout}")
        return items

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        results_dir = os.path.join(out_dir, "mme")
        os.makedirs(results_dir, exist_ok=True)
        per_task = {}
        for subtask in MME_TASKS["Perception"] + MME_TASKS["Cognition"]:
            rows = [r for r in records if r["subtask"] == subtask]
            with open(os.path.join(results_dir, f"{subtask}.txt"), "w", encoding="utf-8") as f:
                for r in rows:
                    print(r["image"], r["question"], r["gt"], mme_clean_response(r["response"]), sep="\t", file=f)
            images = {}
            for r in rows:
                images.setdefault(r["key"].rsplit("/", 1)[0], []).append((r["gt"], mme_clean_response(r["response"])))
            per_task[subtask] = list(images.values())
        return mme_scores(per_task)
