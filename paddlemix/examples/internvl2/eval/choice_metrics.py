"""Scorers for closed answers: MME and POPE (yes/no), ScienceQA/MMBench options, MVBench.

Each mirrors the post-processing and arithmetic of the official scorer (MME ``eval.py`` +
``calculation.py``, POPE ``eval_pope.py``, ``evaluate_scienceqa.py``, ``evaluate_mmbench.py``,
``evaluate_mvbench.py``) so that the same answers give the same numbers.
"""
import re
from typing import Dict, List, Sequence, Tuple

MME_TASKS = {
    "Perception": ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                   "artwork", "OCR"),
    "Cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}
_CJK = re.compile(r"[\u4e00-\u9fa5]")


def mme_clean_response(response: str) -> str:
    """MME ``eval.py`` post-processing: Chinese yes/no to English, true/false to yes/no, no CJK left."""
    response = response.replace("\n", "").replace("不是", "No").replace("是", "Yes").replace("否", "No")
    response = response.lower().replace("true", "yes").replace("false", "no")
    return _CJK.sub("", response)


def mme_label(response: str) -> str:
    """``calculation.py``: 'yes'/'no' when the (cleaned) answer is one, or starts with one within 4 chars."""
    response = response.lower()
    if response in ("yes", "no"):
        return response
    prefix = response[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_task_score(images: Sequence[Sequence[Tuple[str, str]]]) -> Dict[str, float]:
    """acc, acc_plus and score = 100 * (acc + acc_plus) of one subtask.

    ``images`` holds, per image, its two (ground truth, cleaned response) pairs. acc counts
    'other' answers as wrong; acc_plus is the share of images with both questions right.
    The official tab-separated result file cannot hold a response containing a tab: such a
    line is skipped by ``calculation.py`` (left out of acc, and its image misses acc_plus).
    """
    correct = total = both_right = 0
    for pairs in images:
        if len(pairs) != 2:
            raise ValueError(f"MME pairs two questions per image, got {len(pairs)}")
        readable = [(gt, response) for gt, response in pairs if "\t" not in response]
        right = sum(1 for gt, response in readable if mme_label(response) == gt.lower())
        correct += right
        total += len(readable)
        both_right += right == 2
    acc = correct / total
    acc_plus = both_right / len(images)
    return {"acc": acc, "acc_plus": acc_plus, "score": acc * 100 + acc_plus * 100}


def mme_scores(tasks: Dict[str, Sequence[Sequence[Tuple[str, str]]]]) -> Dict:
    """Perception and Cognition totals (sums of subtask scores) plus every subtask's numbers."""
    per_task = {name: mme_task_score(tasks[name]) for names in MME_TASKS.values() for name in names}
    totals = {group: sum(per_task[name]["score"] for name in names) for group, names in MME_TASKS.items()}
    return {**totals, "tasks": per_task}


def pope_label(text: str) -> str:
    """``eval_pope.py``: first sentence, commas dropped; 'no' when a word is No/no/not, else 'yes'."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_metrics(responses: Sequence[str], labels: Sequence[str]) -> Dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio of one POPE split ('yes' is the positive class).

    The official script divides by zero when nothing is predicted positive; 0 is reported instead.
    """
    if len(responses) != len(labels):
        raise ValueError(f"{len(responses)} POPE answers for {len(labels)} labels")
    preds = [pope_label(r) == "yes" for r in responses]
    gold = [label != "no" for label in labels]
    tp = sum(p and g for p, g in zip(preds, gold))
    fp = sum(p and not g for p, g in zip(preds, gold))
    tn = sum(not p and not g for p, g in zip(preds, gold))
    fn = sum(not p and g for p, g in zip(preds, gold))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / (tp + tn + fp + fn), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(preds) / len(preds), "TP": tp, "FP": fp, "TN": tn, "FN": fn}


def scienceqa_option(pred: str, options: Dict[str, str]) -> str:
    """``evaluate_scienceqa.py`` post_process: the option letter a free-form answer names."""
    pred = pred.strip()
    if len(pred) == 1:
        return pred
    if len(pred) > 1 and pred[0] in options:
        return pred[0]
    if len(pred) > 1:
        for letter, text in options.items():
            if text in pred:
                return letter
    if len(pred) > 1 and pred[1] == ".":
        pred = pred[0]
    # The official indexes pred[2] unguarded and crashes on a 2-character "(X"; such answers stay as they are.
    if len(pred) > 2 and pred[0] == "(" and pred[2] == ")":
        pred = pred[1]
    return pred


def mmbench_option(pred: str, options: Dict[str, str]) -> str:
    """``evaluate_mmbench.py`` post_process: first char if it is an option letter, else the option text found."""
    pred = pred.strip()
    if len(pred) == 1:
        return pred
    if pred[:1] in options:
        return pred[0]
    for letter, text in options.items():
        if str(text) in pred:
            return letter
    return pred


def circular_accuracy(rows: Sequence[Tuple[int, str, str]]) -> float:
    """MMBench CircularEval on (index, predicted letter, answer letter) rows.

    Circular copies of a question have index + k * 1e6; a question counts only when the
    prediction is right in every copy. Letters are matched exactly (no LLM answer extraction).
    """
    groups: Dict[int, List[bool]] = {}
    main = []
    for index, prediction, answer in rows:
        group = int(index % 1e6)
        groups.setdefault(group, []).append(prediction == answer)
        if index == group:
            main.append(group)
    hits = [all(groups[g]) for g in main]
    return sum(hits) / len(hits) if hits else 0.0


def mvbench_correct(pred: str, gt: str) -> bool:
    """``evaluate_mvbench.py`` check_ans: the first word of the answer against the '(X)' of the truth.

    Like the official, an empty answer matches (the empty string is in every option).
    """
    pred_option = pred.replace("Answer: ", "").lower().split(" ")[0]
    gt_option = gt.lower().split(" ")[0]
    return pred_option.replace(".", "") in gt_option or gt_option in pred_option


def mmvp_pair_accuracy(correct: Sequence[bool]) -> float:
    """MMVP: questions are scored in consecutive pairs and a pair counts only when both are right."""
    pairs = [correct[i:i + 2] for i in range(0, len(correct) - 1, 2)]
    return sum(all(pair) for pair in pairs) / len(pairs) if pairs else 0.0
