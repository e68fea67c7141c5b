"""MM-Vet, as ``eval/mmvet/evaluate_mmvet.py`` and the benchmark's own ``mm-vet_evaluator.py``.

``data/mm-vet/llava-mm-vet.jsonl`` lines hold ``question_id``, ``image`` (under ``images/``) and
``text``; the prompt is the text followed by one space, exactly as upstream builds it. The
answers go to ``mmvet-submission.json`` (``{"v1_<id>": answer}``), the file the MM-Vet evaluator
takes. With a judge, they are scored here as that evaluator does: ``mm-vet.json`` (from the
benchmark's ``mm-vet.zip``) gives each question's ground truth and capabilities; the judge
completes a few-shot table with a correctness between 0 and 1; the score of a capability is the
mean correctness of its questions, in percent.
"""
import os
from collections import defaultdict
from typing import Dict, Sequence

from ..datafiles import DatasetError, read_json, read_jsonl, write_json
from ..visuals import ImageFile
from .base import Item, JudgedTask, unique_keys

GRADING_EXAMPLES = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""  # the evaluator's few-shot prompt
DIGIT_REQUEST = "\nPredict the correctness of the answer (digit): "
GRADE_TRIES = 5  # the evaluator's: after five unreadable grades the answer scores 0.0
HOW_TO_SCORE = ("upload the submission to the MM-Vet evaluator (GPT-4 judge): "
                "https://huggingface.co/spaces/whyu/MM-Vet_Evaluator")


def grading_prompt(question: str, truth: str, prediction: str) -> str:
    truth = truth.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return GRADING_EXAMPLES + "\n" + " | ".join([question, truth, prediction, ""])


def parse_grade(reply: str):
    """The correctness at the start of the reply if it is a number in [0, 1], else None."""
    try:
        grade = float(reply.split(" ")[0].strip())
    except ValueError:
        return None
    return grade if 0.0 <= grade <= 1.0 else None


class MMVetTask(JudgedTask):
    name = "mmvet"
    folder = "data/mm-vet"
    layout = "data/mm-vet/{llava-mm-vet.jsonl, images/}; for scoring also mm-vet.json"
    max_new_tokens = 1000
    judge_model = "gpt-4-0613"
    _cached_truth = None

    def load(self):
        rows = read_jsonl(self.require("data/mm-vet/llava-mm-vet.jsonl"))
        keys = unique_keys([row["question_id"] for row in rows])
        return [Item(key, row["text"] + " ", ImageFile(os.path.join(self.root, "data", "mm-vet", "images",
                                                                     row["image"])),
                     {"question_id": row["question_id"]})
                for key, row in zip(keys, rows)]

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        name = f"{self.name}-submission.json"
        write_json(os.path.join(out_dir, name), {f"v1_{r['question_id']}": r["response"] for r in records})
        return {"submission": name, "or_score_with": HOW_TO_SCORE}

    def check_judge_files(self) -> None:
        self._truth()

    def _truth(self) -> Dict:
        if self._cached_truth is None:
            self._cached_truth = read_json(self.require("data/mm-vet/mm-vet.json"))
        return self._cached_truth

    def _question(self, record: Dict) -> Dict:
        truth = self._truth().get(f"v1_{record['question_id']}")
        if truth is None:
            raise DatasetError(f"{self.name}: mm-vet.json has no entry v1_{record['question_id']}")
        return truth

    def judge_one(self, record: Dict, judge) -> Dict:
        truth = self._question(record)
        prompt = grading_prompt(truth["question"], truth["answer"], record["response"])
        for attempt in range(GRADE_TRIES):
            # the evaluator's retries: the same prompt asking for the digit, at 0.0, 0.5, 1.0, 1.5
            temperature = 0.5 * max(0, attempt - 1)
            reply = judge.ask([{"role": "user", "content": prompt + (DIGIT_REQUEST if attempt else "")}],
                              temperature=temperature, max_tokens=3)
            grade = parse_grade(reply)
            if grade is not None:
                return {"grade": grade, "reply": reply, "tries": attempt + 1}
        return {"grade": 0.0, "reply": reply, "tries": GRADE_TRIES}

    def score(self, records: Sequence[Dict], judgments: Dict[str, Dict], out_dir: str) -> Dict:
        capability, integration = defaultdict(list), defaultdict(list)
        for record in records:
            grade = judgments[record["key"]]["grade"]
            capabilities = sorted(set(self._question(record)["capability"]))
            for name in capabilities:
                capability[name].append(grade)
            integration["_".join(capabilities)].append(grade)
        grades = [judgments[r["key"]]["grade"] for r in records]

        def percent(values):
            return round(100 * sum(values) / len(values), 1)

        name = f"{self.name}-grades.json"
        write_json(os.path.join(out_dir, name), {f"v1_{r['question_id']}": judgments[r["key"]] for r in records})
        return {"total": percent(grades), "grades": name,
                "capability": {key: percent(values) for key, values in sorted(capability.items())},
                "capability_integration": {key: percent(values) for key, values in sorted(integration.items())}}
