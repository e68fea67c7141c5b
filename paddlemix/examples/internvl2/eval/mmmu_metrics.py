"""MMMU's answer parsing and scoring (``eval/mmmu/eval_utils.py`` and ``main_eval_only.py`` upstream).

A multiple-choice answer is first mapped to a letter by the MMBench-style post-processing and
then compared with the letter; an open answer is parsed into candidate strings and numbers
(the tail after "is", "so", "answer" ..., every number in it, normalised) and counts when a
normalised ground truth is among them (numbers) or inside one of them (strings).
"""
import re
from typing import Dict, List, Sequence, Union

DOMAINS = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": ["Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": ["Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"],
}
# The official order of the 30 subjects (data_utils.CAT_SHORT2LONG), in which the questions are run.
SUBJECTS = ("Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory",
            "Basic_Medical_Science", "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science", "Design",
            "Diagnostics_and_Laboratory_Medicine", "Economics", "Electronics", "Energy_and_Power", "Finance",
            "Geography", "History", "Literature", "Manage", "Marketing", "Materials", "Math",
            "Mechanical_Engineering", "Music", "Pharmacy", "Physics", "Psychology", "Public_Health", "Sociology")

Normalised = Union[str, float]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def normalize(text: str) -> List[Normalised]:
    """A number rounded to 2 decimals, else the lowercased string (one letter padded by a space on either side)."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def extract_numbers(text: str) -> List[str]:
    """Numbers with thousands commas, in scientific notation and plain, as the official three patterns find them."""
    with_commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", text)
    return with_commas + scientific + simple


def _key_responses(response: str) -> List[str]:
    """The shortest tail after an answer indicator in each sentence ("=" too in the last one)."""
    response = response.strip().strip(".").lower()
    sentences = re.split(r"\.\s(?=[A-Z])|\n", response)
    indicators = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
    keys = []
    for position, sentence in enumerate(sentences):
        if position == len(sentences) - 1:
            indicators = indicators + ["="]
        shortest = None
        for indicator in indicators:
            if indicator in sentence:
                tail = sentence.split(indicator)[-1].strip()
                # As upstream, an empty tail is replaced by the next one, whatever its length.
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
            keys.append(shortest)
    return keys or [response]


def parse_open_response(response: str) -> List[Normalised]:
    """The candidate answers of an open response, normalised and deduplicated."""
    keys = _key_responses(response)
    candidates = list(keys)
    for key in keys:
        candidates.extend(extract_numbers(key))
    return list({value for candidate in candidates for value in normalize(candidate)})


def open_correct(gold: Union[str, Sequence[str]], candidates: Sequence[Normalised]) -> bool:
    golds = [value for answer in ([gold] if isinstance(gold, str) else gold) for value in normalize(answer)]
    for candidate in candidates:
        if isinstance(candidate, str):
            if any(isinstance(g, str) and g in candidate for g in golds):
                return True
        elif candidate in golds:
            return True
    return False


def choice_correct(gold: Union[str, Sequence[str]], prediction: str) -> bool:
    return prediction in gold if isinstance(gold, list) else prediction == gold


def mmmu_scores(rows: Sequence[Dict]) -> Dict:
    """Accuracy per subject, per domain and overall (question-weighted), from rows with ``subject``,
    ``question_type``, ``answer`` and ``prediction`` (the post-processed letter or the raw open answer)."""
    per_subject = {}
    for row in rows:
        if row["question_type"] == "multiple-choice":
            correct = choice_correct(row["answer"], row["prediction"])
        else:
            correct = open_correct(row["answer"], parse_open_response(row["prediction"]))
        per_subject.setdefault(row["subject"], []).append(correct)

    def summary(subjects):
        hits = [hit for subject in subjects for hit in per_subject.get(subject, [])]
        return {"num": len(hits), "acc": sum(hits) / len(hits) if hits else 0.0}

    return {"overall": summary(per_subject),
            "domains": {domain: summary(subjects) for domain, subjects in DOMAINS.items()
                        if any(s in per_subject for s in subjects)},
            "subjects": {subject: summary([subject]) for subject in SUBJECTS if subject in per_subject}}
