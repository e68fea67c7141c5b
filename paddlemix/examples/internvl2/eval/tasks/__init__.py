"""The benchmarks ``evaluate.sh`` knows, by the dataset names of the official ``evaluate.sh``."""
from .base import Item, JudgedTask, Task, check_visuals
from .llava_bench import LLaVABenchTask
from .mathvista import SPLITS as MATHVISTA_SPLITS
from .mathvista import MathVistaTask
from .mmbench import FILES as MMBENCH_FILES
from .mmbench import MMBenchTask
from .mme import MMETask
from .mmmu import SPLITS as MMMU_SPLITS
from .mmmu import MMMUTask
from .mmvet import MMVetTask
from .mmvp import MMVPTask
from .mvbench import MVBenchTask
from .pope import POPETask
from .refcoco import ALL_SPLITS as REFCOCO_ALL
from .refcoco import SPLITS as REFCOCO_SPLITS
from .refcoco import RefCOCOTask
from .scienceqa import ScienceQATask
from .seed import SEEDTask
from .tiny_lvlm import TinyLVLMTask
from .vqa import SPECS as VQA_SPECS
from .vqa import VQATask

DATASETS = ("mme", *VQA_SPECS, "pope", "scienceqa", *MMBENCH_FILES, "mvbench", REFCOCO_ALL, *REFCOCO_SPLITS,
            "mmvp", "seed", *MMMU_SPLITS, "tiny_lvlm", "mmvet", "llava-bench", *MATHVISTA_SPLITS)


def build_task(name: str, root: str, num_segments: int = 16) -> Task:
    """The task for an official dataset name; ValueError naming the valid ones otherwise."""
    if name in VQA_SPECS:
        return VQATask(name, root)
    if name in MMBENCH_FILES:
        return MMBenchTask(name, root)
    if name in REFCOCO_SPLITS or name == REFCOCO_ALL:
        return RefCOCOTask(name, root)
    if name in MMMU_SPLITS:
        return MMMUTask(name, root)
    if name in MATHVISTA_SPLITS:
        return MathVistaTask(name, root)
    simple = {"mme": MMETask, "pope": POPETask, "scienceqa": ScienceQATask, "mmvp": MMVPTask,
              "seed": SEEDTask, "tiny_lvlm": TinyLVLMTask,
              "mmvet": MMVetTask, "llava-bench": LLaVABenchTask}
    if name in simple:
        return simple[name](root)
    if name == "mvbench":
        return MVBenchTask(root, num_segments)
    raise ValueError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")


__all__ = ["DATASETS", "Item", "JudgedTask", "Task", "build_task", "check_visuals"]
