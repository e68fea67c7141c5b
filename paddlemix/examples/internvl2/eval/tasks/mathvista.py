"""MathVista testmini, as ``eval/mathvista/evaluate_mathvista.py``, ``extract_answer.py`` and ``calculate_score.py``.

``data/MathVista/annot_testmini.json`` (from the AI4Math/MathVista dataset repository, with its
``images.zip`` unpacked beside it) maps each ``pid`` to a problem whose ``query`` is the whole
prompt and whose ``image`` is relative to ``data/MathVista/``. Answers of up to 4096 tokens.

Scoring: an answer that already is one of the choices, or parses as the integer or float asked
for, is taken as is; any other answer goes to the judge with the official few-shot extraction
prompt (five tries, then an empty extraction). The extraction is normalised as the official
``calculate_score.py`` does (option letter to choice text, else the most similar choice by edit
distance; integers and floats to the problem's precision) and must equal the answer exactly.
"""
import os
import re
from collections import defaultdict
from typing import Dict, Optional, Sequence

from ..datafiles import read_json, write_json
from ..judge import PromptTooLong
from ..visuals import ImageFile
from .base import Item, JudgedTask

EXTRACTION_EXAMPLES = """
Please read the following example. Then extract the answer from the model response and type it at the end of the prompt.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: Which number is missing?

Model response: The number missing in the sequence is 14.

Extracted answer: 14

Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.
Question: What is the fraction of females facing the camera?

Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females in the group are facing the camera.

Extracted answer: 0.6

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.
Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)

Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.

Extracted answer: 1.45

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.
Question: Between which two years does the line  graph saw its maximum peak?

Model response: The line graph saw its maximum peak between 2007 and 2008.

Extracted answer: [2007, 2008]

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: What fraction of the shape is blue?\nChoices:\n(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5

Model response: The correct answer is (B) 8/11.

Extracted answer: B
"""  # the official few-shot prompt of prompts/ext_ans.py
EXTRACTION_TRIES = 5  # the official patience
BREAKDOWN = ("question_type", "answer_type", "language", "source", "category", "task", "context", "grade", "skills")
SPLITS = {"mathvista-testmini": "testmini"}
# The problem fields the scorer needs, kept with each question and written back in the results files.
FIELDS = ("pid", "query", "question_type", "answer_type", "choices", "precision", "answer", "metadata")


def rule_extraction(response: str, problem: Dict) -> Optional[str]:
    """The answer when no judge is needed (official ``extract_answer`` before its LLM call), else None."""
    if response == "":
        return ""
    if problem["question_type"] == "multi_choice" and response in problem["choices"]:
        return response
    casts = {"integer": lambda text: str(int(text)), "float": lambda text: str(float(text))}
    cast = casts.get(problem["answer_type"])
    if cast is not None:
        try:
            return cast(response)
        except ValueError:
            pass
    return None


def extraction_prompt(query: str, response: str) -> str:
    return f"{EXTRACTION_EXAMPLES.strip()}\n\n{query}\n\n{response}\n\nExtracted answer: "


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions and substitutions cost 1)."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def normalize_extraction(extraction, choices, question_type: str, answer_type: str, precision) -> Optional[str]:
    """The extraction in the answer's form (``normalize_extracted_answer`` of ``calculate_score.py``)."""
    if question_type == "multi_choice":
        extraction = extraction.strip() if isinstance(extraction, str) else str(extraction)
        letters = re.findall(r"\(([a-zA-Z])\)", extraction)
        if letters:
            extraction = letters[0].upper()
        options = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in options:
            return choices[options.index(extraction)]
        distances = [edit_distance(extraction, choice) for choice in choices]
        return choices[distances.index(min(distances))]
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), int(precision)))
    except (TypeError, ValueError):
        return None
    if answer_type == "list":
        return str(extraction)
    return extraction


def accuracy(flags: Sequence[bool]) -> Dict:
    return {"accuracy": round(100 * sum(flags) / len(flags), 2) if flags else 0.0,
            "correct": sum(flags), "total": len(flags)}


class MathVistaTask(JudgedTask):
    folder = "data/MathVista"
    layout = "data/MathVista/{annot_testmini.json, images/}"
    max_new_tokens = 4096
    judge_model = "gpt-3.5-turbo"  # what extract_answer.py's request sends (its --llm_engine is not passed on)

    def __init__(self, name: str, root: str):
        super().__init__(root)
        self.name = name

    def load(self):
        problems = read_json(self.require(f"data/MathVista/annot_{SPLITS[self.name]}.json"))
        return [Item(str(pid), problem["query"], ImageFile(os.path.join(self.root, self.folder, problem["image"])),
                     {name: problem.get(name) for name in FIELDS})
                for pid, problem in problems.items()]

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        """The official results file (``{pid: problem with its response}``), which upstream's scripts also read."""
        name = f"{self.name}-submission.json"
        write_json(os.path.join(out_dir, name), {r["pid"]: _problem(r) for r in records})
        return {"submission": name}

    def judge_one(self, record: Dict, judge) -> Dict:
        extraction = rule_extraction(record["response"], record)
        if extraction is not None:
            return {"extraction": extraction, "by": "rule"}
        prompt = extraction_prompt(record["query"], record["response"])
        for _ in range(EXTRACTION_TRIES):
            try:
                reply = judge.ask([{"role": "user", "content": prompt}], temperature=0, max_tokens=256).strip()
            except PromptTooLong:
                prompt = prompt[len(prompt) - int(len(prompt) * 0.9):]  # keep the tail, as upstream does
                continue
            if reply:
                return {"extraction": reply, "by": "judge"}
        return {"extraction": "", "by": "judge"}

    def score(self, records: Sequence[Dict], judgments: Dict[str, Dict], out_dir: str) -> Dict:
        scored, groups = {}, defaultdict(lambda: defaultdict(list))
        for record in records:
            extraction = judgments[record["key"]]["extraction"]
            prediction = normalize_extraction(extraction, record["choices"], record["question_type"],
                                              record["answer_type"], record["precision"])
            correct = prediction == record["answer"]
            scored[record["pid"]] = {**_problem(record), "extraction": extraction, "prediction": prediction,
                                     "true_false": correct}
            facets = {**(record.get("metadata") or {}), "question_type": record["question_type"],
                      "answer_type": record["answer_type"]}
            for name in BREAKDOWN:
                values = facets.get(name)
                for value in values if isinstance(values, list) else [values]:
                    if value is not None:
                        groups[name][str(value)].append(correct)
        name = f"{self.name}-scored.json"
        write_json(os.path.join(out_dir, name), scored)
        metrics = accuracy([s["true_false"] for s in scored.values()])
        metrics["scored"] = name
        for group in BREAKDOWN:
            if groups[group]:
                metrics[group] = {value: accuracy(flags)["accuracy"] for value, flags in sorted(groups[group].items())}
        return metrics


def _problem(record: Dict) -> Dict:
    """The problem with the model's response, as upstream's results file holds it."""
    return {name: record[name] for name in (*FIELDS, "response")}
