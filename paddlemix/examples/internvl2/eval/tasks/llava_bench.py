"""LLaVA-Bench (In-the-Wild), as ``eval/llava_bench/evaluate_llava_bench.py``, ``eval_gpt_review_bench.py``
and ``summarize_gpt_review.py``.

``data/llava-bench-in-the-wild/`` holds ``questions.jsonl`` (``question_id``, ``image``, ``text``,
``category``), ``images/``, and for scoring ``context.jsonl`` (``image``, ``caption``) and
``answers_gpt4.jsonl`` (the reference answers). The prompt is the question followed by
" Please give a detailed answer.", answers up to 1000 tokens.

The judge reads the image's caption, the question, the GPT-4 answer (assistant 1) and ours
(assistant 2), and puts the two scores on the first line of its review. The result per category
and overall is our mean score relative to GPT-4's, in percent.
"""
import os
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

from ..datafiles import DatasetError, read_jsonl, write_jsonl
from ..visuals import ImageFile
from .base import Item, JudgedTask, unique_keys

FOLDER = "data/llava-bench-in-the-wild"
SUFFIX = " Please give a detailed answer."
SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
ROLE = "Assistant"
# rule.json's prompt, the same for its llava_bench_conv, _detail and _complex categories.
RULE = ("We would like to request your feedback on the performance of two AI assistants in response to the user "
        "question displayed above. The user asks the question on observing an image. For your reference, the "
        "visual content in the image is represented with a few sentences describing the image. \n"
        "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
        "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
        "performance.\nPlease first output a single line containing only two values indicating the scores for "
        "Assistant 1 and 2, respectively. The two scores are separated by a space.\nIn the subsequent line, "
        "please provide a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring "
        "that the order in which the responses were presented does not affect your judgment.")
CATEGORIES = ("conv", "detail", "complex")
REVIEW_TRIES = 3  # upstream keeps an unreadable review as (-1, -1); asking again usually gives a readable one


def parse_scores(review: str) -> Optional[List[float]]:
    """The two scores of the review's first line, as upstream's ``parse_score``: "8 9" and "8,9" parse, "8, 9" not."""
    parts = review.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return None
    try:
        return [float(parts[0]), float(parts[1])]
    except ValueError:
        return None


def review_prompt(caption: str, question: str, reference: str, answer: str) -> str:
    return (f"[Context]\n{caption}\n\n[Question]\n{question}\n\n"
            f"[{ROLE} 1]\n{reference}\n\n[End of {ROLE} 1]\n\n"
            f"[{ROLE} 2]\n{answer}\n\n[End of {ROLE} 2]\n\n[System]\n{RULE}\n\n")


def mean_pair(pairs: Sequence[Sequence[float]]) -> Dict:
    """``summarize_gpt_review.py``'s figures: ours relative to GPT-4 in percent, and both scores times 10."""
    reference = sum(pair[0] for pair in pairs) / len(pairs)
    ours = sum(pair[1] for pair in pairs) / len(pairs)
    return {"relative_score": round(ours / reference * 100, 1), "gpt4_score": round(reference * 10, 1),
            "model_score": round(ours * 10, 1), "count": len(pairs)}


class LLaVABenchTask(JudgedTask):
    name = "llava-bench"
    folder = FOLDER
    layout = f"{FOLDER}/{{questions.jsonl, images/}}; for scoring also context.jsonl and answers_gpt4.jsonl"
    max_new_tokens = 1000
    judge_model = "gpt-4-0613"
    _cached_references = None

    def load(self):
        rows = read_jsonl(self.require(f"{FOLDER}/questions.jsonl"))
        keys = unique_keys([row["question_id"] for row in rows])
        return [Item(key, row["text"] + SUFFIX, ImageFile(os.path.join(self.root, FOLDER, "images", row["image"])),
                     {"question_id": row["question_id"], "text": row["text"], "image": row["image"],
                      "category": row["category"]})
                for key, row in zip(keys, rows)]

    def evaluate(self, records: Sequence[Dict], out_dir: str) -> Dict:
        """``llava_bench_results.jsonl`` as upstream writes it (its reviewer script reads it too)."""
        name = "llava_bench_results.jsonl"
        model_id = os.path.basename(os.path.dirname(os.path.normpath(out_dir)))
        write_jsonl(os.path.join(out_dir, name), [{"question_id": r["question_id"], "text": r["response"],
                                                   "model_id": model_id, "metadata": {}} for r in records])
        return {"submission": name}

    def check_judge_files(self) -> None:
        self._references()

    def _references(self):
        """(caption by image, GPT-4 answer by question id) from the scoring files, read once."""
        if self._cached_references is None:
            contexts = read_jsonl(self.require(f"{FOLDER}/context.jsonl"))
            answers = read_jsonl(self.require(f"{FOLDER}/answers_gpt4.jsonl"))
            captions = {row["image"]: "\n".join(row["caption"]) if isinstance(row["caption"], list)
                        else row["caption"] for row in contexts}
            self._cached_references = captions, {row["question_id"]: row["text"] for row in answers}
        return self._cached_references

    def judge_one(self, record: Dict, judge) -> Dict:
        captions, references = self._references()
        if record["image"] not in captions or record["question_id"] not in references:
            raise DatasetError(f"{self.name}: question {record['question_id']} has no caption in context.jsonl "
                               f"or no GPT-4 answer in answers_gpt4.jsonl")
        if record["category"] not in CATEGORIES:
            raise DatasetError(f"{self.name}: question {record['question_id']} has category "
                               f"'{record['category']}'; the judge's rules cover {', '.join(CATEGORIES)}")
        content = review_prompt(captions[record["image"]], record["text"], references[record["question_id"]],
                                record["response"])
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]
        for _ in range(REVIEW_TRIES):
            review = judge.ask(messages, temperature=0.2, max_tokens=1024)
            scores = parse_scores(review)
            if scores is not None:
                break
        return {"review": review, "scores": scores}

    def score(self, records: Sequence[Dict], judgments: Dict[str, Dict], out_dir: str) -> Dict:
        by_category, unreadable = defaultdict(list), 0
        for record in records:
            scores = judgments[record["key"]]["scores"]
            if scores is None:
                unreadable += 1
                continue
            by_category[record["category"]].append(scores)
        pairs = [pair for category in by_category.values() for pair in category]
        if not pairs:
            raise DatasetError(f"{self.name}: the judge gave no readable score for any answer; see the reviews in "
                               f"{out_dir}")
        metrics = mean_pair(pairs)
        metrics["unreadable_reviews"] = unreadable
        metrics["by_category"] = {category: mean_pair(by_category[category])
                                  for category in CATEGORIES if by_category[category]}
        return metrics
