"""Scorers for open-ended answers (TextVQA/OKVQA/VizWiz, DocVQA/InfoVQA, ChartQA, AI2D, GQA).

Each function reproduces the scorer the official InternVL evaluation calls, quirks included,
because a score is only comparable with published numbers when it is computed the same way:
the EvalAI answer normalisation (``textvqa_eval.py``), the DocVQA/InfographicVQA ANLS script,
pix2struct's relaxed accuracy as ``evaluate_vqa.py`` calls it, and the GQA exact match.
"""
import re
from typing import Iterable, Optional, Sequence

# EvalAI's contraction table, verbatim: keys are looked up after lowercasing, so the few
# capitalised ones ("Im", "Ive"...) never match, exactly as in the official scorer.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATIONS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!")
# Both patterns are EvalAI's own; "(?!<=\d)" is a lookahead for the text "<=" + digit (a typo
# for a lookbehind upstream) and is kept so that periods are stripped where the official strips them.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
# EvalAI calls PERIOD_STRIP.sub("", text, re.UNICODE): the flag lands in `count`, capping at 32.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def _strip_punctuation(text: str, comma_strip=COMMA_STRIP) -> str:
    out = text
    digit_comma = comma_strip.search(text) is not None
    for mark in PUNCTUATIONS:
        if mark + " " in text or " " + mark in text or digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, _PERIOD_STRIP_COUNT)


def _digits_and_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_vqa_answer(text: str) -> str:
    """EvalAI's answer processor: lowercase, punctuation, number words, articles, contractions."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return _digits_and_articles(_strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip()))


# Tiny LVLM-eHub's copy of the VQA processor (``eval/tiny_lvlm/tools.py``): no lowercasing or
# comma/question-mark removal before the punctuation step, and its own digit-comma pattern.
TINY_LVLM_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")


def tiny_lvlm_correct(answer: str, gt_answers) -> bool:
    """Tiny LVLM-eHub: some processed ground truth appears as whole words in the processed answer."""
    def process(text):
        text = text.replace("\n", " ").replace("\t", " ").strip()
        return _digits_and_articles(_strip_punctuation(text, TINY_LVLM_COMMA_STRIP))

    processed = process(answer)
    return any(re.search(r"\b" + re.escape(process(gt)) + r"\b", processed) for gt in _as_list(gt_answers))


def vqa_soft_score(prediction: str, gt_answers: Sequence[str]) -> float:
    """VQA accuracy of one answer: min(1, matches/3) averaged over the 10 leave-one-out subsets."""
    answers = [normalize_vqa_answer(a) for a in gt_answers]
    if len(answers) != 10:
        raise ValueError(f"VQA accuracy needs exactly 10 human answers per question, got {len(answers)}")
    predicted = normalize_vqa_answer(prediction)
    if predicted not in answers:
        return 0.0
    accs = []
    for left_out in range(len(answers)):
        matches = sum(1 for i, answer in enumerate(answers) if i != left_out and answer == predicted)
        accs.append(min(1, float(matches) / 3))
    return sum(accs) / len(accs)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute each cost 1)."""
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(a) + 1))
    for j, char_b in enumerate(b):
        current = [j + 1]
        for i, char_a in enumerate(a):
            current.append(previous[i] if char_a == char_b else 1 + min(previous[i], previous[i + 1], current[-1]))
        previous = current
    return previous[-1]


def anls_score(prediction: str, gt_answers: Iterable[str], threshold: float = 0.5) -> float:
    """ANLS of one answer as the DocVQA/InfographicVQA script computes it.

    Distances use whitespace-collapsed lowercase strings but divide by the longer *raw* length
    (of ``str.upper()``), as the official script does; similarity below ``threshold`` scores 0.
    """
    detected = " ".join(prediction.strip().lower().split())
    values = []
    for answer in gt_answers:
        expected = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else float(levenshtein(expected, detected)) / float(length))
    score = 1 - min(values)
    return 0 if score < threshold else score


def _to_float(text: str) -> Optional[float]:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    """pix2struct's ChartQA check: numbers within 5% (a trailing % divides by 100), else exact text."""
    prediction_float = _to_float(prediction)
    target_float = _to_float(target)
    if prediction_float is not None and target_float:
        return abs(prediction_float - target_float) / abs(target_float) <= max_relative_change
    return prediction.lower() == target.lower()


def _as_list(annotation):
    return [annotation] if isinstance(annotation, str) else list(annotation)


def relaxed_accuracy(answers: Sequence[str], annotations: Sequence) -> float:
    """ChartQA relaxed accuracy over a split.

    ``evaluate_vqa.py`` calls ``relaxed_correctness(answer, annotation)``, i.e. with the *model's*
    answer in the target slot, so the 5% is relative to the answer; kept for identical scores.
    """
    scores = [max(relaxed_correctness(answer.strip(), ann) for ann in _as_list(annotation))
              for answer, annotation in zip(answers, annotations)]
    return sum(scores) / len(scores)


def exact_match_accuracy(answers: Sequence[str], annotations: Sequence) -> float:
    """Case-insensitive exact match against any annotation (AI2D option letters)."""
    scores = [max(1.0 if answer.strip().lower() == ann.strip().lower() else 0.0 for ann in _as_list(annotation))
              for answer, annotation in zip(answers, annotations)]
    return sum(scores) / len(scores)


def gqa_prediction(answer: str) -> str:
    """The official GQA conversion of a model answer: trailing periods off, lowercased."""
    return answer.rstrip(".").lower()


def gqa_accuracy(predictions: dict, questions: dict) -> float:
    """GQA ``eval.py`` accuracy: exact match over the balanced questions; every question needs a prediction."""
    scores = []
    for qid, question in questions.items():
        if qid not in predictions:
            raise ValueError(f"no prediction for GQA question {qid}; every question needs an answer")
        if question.get("isBalanced", True):
            scores.append(1.0 if predictions[qid] == question["answer"] else 0.0)
    return sum(scores) / len(scores) if scores else 0.0
