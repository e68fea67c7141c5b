"""MVBench video multiple choice (20 tasks), as ``eval/mvbench/evaluate_mvbench.py``.

Each question shows ``num_segments`` frames (16 in the official ``evaluate.sh``) as
``Frame1: <image>`` lines, the official instruction, the question with ``(A) ...`` options and
"Only give the best option."; up to 1000 new tokens. Score: share of answers whose first word
names the right option, per task and pooled ("Avg"), in percent.
"""
import os
from typing import Dict, Sequence

from ..choice_metrics import mvbench_correct
from ..datafiles import read_json
from ..visuals import VideoClip
from .base import Item, Task

VIDEO = "data/MVBench/video/"
# task -> (question file, video folder, frames stored as jpg folders, question has start/end seconds)
TASKS = {
    "Action Sequence": ("action_sequence.json", "star/Charades_v1_480/", False, True),
    "Action Prediction": ("action_prediction.json", "star/Charades_v1_480/", False, True),
    "Action Antonym": ("action_antonym.json", "ssv2_video/", False, False),
    "Fine-grained Action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos/", False, False),
    "Unexpected Action": ("unexpected_action.json", "FunQA_test/test/", False, False),
    "Object Existence": ("object_existence.json", "clevrer/video_validation/", False, False),
    "Object Interaction": ("object_interaction.json", "star/Charades_v1_480/", False, True),
    "Object Shuffle": ("object_shuffle.json", "perception/videos/", False, False),
    "Moving Direction": ("moving_direction.json", "clevrer/video_validation/", False, False),
    "Action Localization": ("action_localization.json", "sta/sta_video/", False, True),
    "Scene Transition": ("scene_transition.json", "scene_qa/video/", False, False),
    "Action Count": ("action_count.json", "perception/videos/", False, False),
    "Moving Count": ("moving_count.json", "clevrer/video_validation/", False, False),
    "Moving Attribute": ("moving_attribute.json", "clevrer/video_validation/", False, False),
    "State Change": ("state_change.json", "perception/videos/", False, False),
    "Fine-grained Pose": ("fine_grained_pose.json", "nturgbd/", False, False),
    "Character Order": ("character_order.json", "perception/videos/", False, False),
    "Egocentric Navigation": ("egocentric_navigation.json", "vlnqa/", False, False),
    "Episodic Reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq/", True, True),
    "Counterfactual Inference": ("counterfactual_inference.json", "clevrer/video_validation/", False, False),
}
INSTRUCTION = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
               "movement of objects, and the action and pose of persons. Based on your observations, select the "
               "best option that accurately addresses the question.\n")
QUESTION_SUFFIX = "\nOnly give the best option."


def question_and_answer(data: Dict):
    """``Question: ...\\nOptions:\\n(A) ...`` and the ground truth ``(X) option``."""
    question = f"Question: {data['question']}\nOptions:\n"
    answer_idx = -1
    for idx, candidate in enumerate(data["candidates"]):
        question += f"({chr(ord('A') + idx)}) {candidate}\n"
        if candidate == data["answer"]:
            answer_idx = idx
    return question.rstrip(), f"({chr(ord('A') + answer_idx)}) {data['answer']}"


class MVBenchTask(Task):
    name = "mvbench"
    folder = "data/MVBench"
    layout = "data/MVBench/{json/<task>.json (20 files), video/<source folders>/}"
    max_new_tokens = 1000
    default_max_num = 1

    def __init__(self, root: str, num_segments: int = 16):
        super().__init__(root)
        self.num_segments = num_segments

    def load(self):
        items = []
        frames = "\n".join(f"Frame{i + 1}: <image>" for i in range(self.num_segments))
        for task, (filename, folder, frame_folder, has_bound) in TASKS.items():
            for position, data in enumerate(read_json(self.require(f"data/MVBench/json/{filename}"))):
                question, answer = question_and_answer(data)
                bound = (data["start"], data["end"]) if has_bound else None
                clip = VideoClip(os.path.join(self.root, VIDEO, folder, data["video"]), bound, frame_folder)
                prompt = frames + "\n" + INSTRUCTION + "\n" + question + QUESTION_SUFFIX
                items.append(Item(f"{filename[:-len('.json')]}/{position}", prompt, clip,
                                  {"task_type": task, "gt": answer}))
        return items

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        per_task = {}
        for r in records:
            per_task.setdefault(r["task_type"], []).append(mvbench_correct(r["response"], r["gt"]))
        result = {task: sum(hits) / len(hits) * 100 for task, hits in per_task.items()}
        result["Avg"] = sum(sum(hits) for hits in per_task.values()) / len(records) * 100
        return result
