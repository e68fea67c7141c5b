"""What every benchmark provides to the runner: its questions, decoding length and scorer."""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

from ..datafiles import DatasetError, require


@dataclass
class Item:
    """One question: ``key`` identifies its answer in the answer files across runs and ranks."""

    key: str
    prompt: str
    visual: object  # visuals.ImageFile / EncodedImage / VideoClip
    meta: Dict = field(default_factory=dict)  # ground truth and ids the scorer needs (JSON types)


class Task:
    """A benchmark: subclasses set the class attributes and implement ``load`` and ``evaluate``."""

    name = ""
    folder = ""        # dataset folder under the data root, e.g. "data/textvqa"
    layout = ""        # expected layout, shown when a file is missing
    max_new_tokens = 10
    default_max_num = 6

    def __init__(self, root: str):
        self.root = root

    def require(self, relpath: str) -> str:
        """Absolute path of a required file; checks the dataset folder first for a clearer error."""
        require(self.root, self.folder, self.name, self.layout)
        return require(self.root, relpath, self.name, self.layout)

    def load(self) -> List[Item]:
        raise NotImplementedError

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        """Metrics from the merged records (dataset order), writing any submission file into ``out_dir``."""
        raise NotImplementedError


class JudgedTask(Task):
    """A benchmark the official code scores with an LLM judge (MathVista, MM-Vet, LLaVA-Bench).

    ``evaluate`` writes the answers in the official scorer's input format and needs no judge;
    ``judge_one`` asks the judge about one answer and returns a JSON judgment; ``score`` turns
    all judgments into the metrics.
    """

    judge_model = ""  # the model the official scorer asks; --judge-model overrides it

    def check_judge_files(self) -> None:
        """Fail before any judge call when a ground-truth file the judge needs is missing."""

    def judge_one(self, record: Dict, judge) -> Dict:
        raise NotImplementedError

    def score(self, records: Sequence[Dict], judgments: Dict[str, Dict], out_dir: str) -> Dict:
        raise NotImplementedError


def check_visuals(task: Task, items: Sequence[Item]) -> None:
    """Fail before loading the model when images or videos the questions point to are missing."""
    missing = [path for item in items for path in item.visual.files if not os.path.exists(path)]
    if missing:
        raise DatasetError(f"{task.name}: {len(missing)} of the images/videos are missing, e.g. {missing[0]}; "
                           f"expected layout: {task.layout} (see paddlemix/examples/internvl2/eval/README.md)")


def unique_keys(ids: Sequence, prefix: str = "") -> List[str]:
    """Answer keys from question ids; positions are added when the ids are not unique."""
    keys = [f"{prefix}{i}" for i in ids]
    if len(set(keys)) != len(keys):
        keys = [f"{prefix}{position}:{i}" for position, i in enumerate(ids)]
    return keys
