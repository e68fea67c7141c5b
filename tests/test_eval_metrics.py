"""The evaluation scorers on hand-computed cases, including the official scorers' quirks."""
import pytest

from paddlemix.examples.internvl2.eval import choice_metrics as cm
from paddlemix.examples.internvl2.eval import vqa_metrics as vm
from paddlemix.examples.internvl2.eval.runner import shard


@pytest.mark.parametrize("raw, normalized", [
    ("Two", "2"), ("2", "2"), ("two dogs", "2 dogs"), ("none", "0"),
    ("the dog", "dog"), ("A dog", "dog"), ("an apple", "apple"),
    ("dog's", "dog 's"),              # "'s" is split off, so it does not match "dogs"
    ("dont", "don't"), ("isnt", "isn't"), ("Its", "its"), ("thats", "that's"), ("yall'll", "y'all'll"),
    ("Im", "im"),                     # the official table's key is "Im": lowercased text never matches it
    ("Yes.", "yes"), ("3.5", "3.5"), ("hello-world", "hello world"), ("hello - world", "hello world"),
    ("12,000", "12000"), ("what?", "what"), ("a\nb", "b"),
])
def test_vqa_normalization(raw, normalized):
    assert vm.normalize_vqa_answer(raw) == normalized


def test_periods_are_stripped_at_most_32_times_like_evalai():
    assert vm.normalize_vqa_answer("x" + "." * 40 + "y") == "x" + "." * 8 + "y"


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_soft_score_leave_one_out(matches, expected):
    # Leave-one-out over 10 answers: with m matches, m subsets see m-1 and 10-m see m (each capped at 3).
    gts = ["two"] * matches + ["cat"] * (10 - matches)
    assert vm.vqa_soft_score("2", gts) == pytest.approx(expected)


def test_vqa_soft_score_normalizes_both_sides_and_needs_ten_answers():
    assert vm.vqa_soft_score("The Dog", ["dog"] * 3 + ["a dog"] * 7) == 1.0
    assert vm.vqa_soft_score("dog's", ["dogs"] * 10) == 0.0
    with pytest.raises(ValueError, match="10 human answers"):
        vm.vqa_soft_score("dog", ["dog"] * 9)


def test_levenshtein():
    assert vm.levenshtein("kitten", "sitting") == 3
    assert vm.levenshtein("", "abc") == 3
    assert vm.levenshtein("abc", "abc") == 0


def test_anls_threshold():
    gt = ["abcdefghij"]
    assert vm.anls_score("abcdefghij", gt) == 1.0
    assert vm.anls_score("abcdefgxyz", gt) == pytest.approx(0.7)
    assert vm.anls_score("abcdevwxyz", gt) == pytest.approx(0.5)   # exactly 0.5 is kept
    assert vm.anls_score("abcduvwxyz", gt) == 0                     # 0.4 is below the threshold
    assert vm.anls_score("  ABCDEFGHIJ ", gt) == pytest.approx(1 - 0 / 13)  # normalised, raw length 13
    assert vm.anls_score("abcdefghi", ["zzz", "abcdefghij"]) == pytest.approx(0.9)  # best answer counts


def test_anls_divides_by_raw_length():
    # The distance uses collapsed whitespace but the denominator is the raw length: 1 - 1/12.
    assert vm.anls_score("abcdefghi   ", ["abcdefghij"]) == pytest.approx(1 - 1 / 12)


@pytest.mark.parametrize("answer, annotation, correct", [
    ("12%", "0.12", True), ("0.12", "12%", True), ("12", "12%", False),
    ("105", "100", True),    # |105-100| / 105 = 4.8%: the official divides by the model's answer
    ("95", "100", False),    # |95-100| / 95 = 5.3%, although 5% of 100
    ("Yes", "yes", True), ("0", "0.0", False), ("0", "0", True), ("ten", "10", False),
])
def test_chartqa_relaxed_accuracy(answer, annotation, correct):
    assert vm.relaxed_accuracy([answer], [annotation]) == float(correct)


def test_chartqa_any_annotation_and_mean():
    assert vm.relaxed_accuracy([" 1.02 ", "x"], [["9", "1"], "y"]) == 0.5


def test_exact_match_and_gqa():
    assert vm.exact_match_accuracy([" b ", "C"], ["B", ["a", "c"]]) == 1.0
    assert vm.gqa_prediction("Yes..") == "yes"
    questions = {"1": {"answer": "yes", "isBalanced": True}, "2": {"answer": "red", "isBalanced": True},
                 "3": {"answer": "no", "isBalanced": False}}
    assert vm.gqa_accuracy({"1": "yes", "2": "blue", "3": "no"}, questions) == 0.5
    with pytest.raises(ValueError, match="no prediction for GQA question 3"):
        vm.gqa_accuracy({"1": "yes", "2": "red"}, questions)


@pytest.mark.parametrize("response, label", [
    ("Yes", "yes"), ("No.", "no"), ("是", "yes"), ("不是", "no"), ("否", "no"), ("True", "yes"),
    ("false", "no"), ("yes, it is", "yes"), (" yes", "yes"),
    ("  yes", "other"),               # only the first 4 characters are searched ("Nope", "no"), ("maybe", "other"),
    ("There is no dog", "other"), ("", "other"),
])
def test_mme_answer_cleaning(response, label):
    assert cm.mme_label(cm.mme_clean_response(response)) == label


def test_mme_acc_plus_pairs_the_two_questions_of_an_image():
    images = [[("Yes", "yes"), ("No", "no")],        # both right
              [("Yes", "yes"), ("No", "yes")],       # one right
              [("Yes", "maybe"), ("No", "no")]]      # 'other' is wrong
    score = cm.mme_task_score(images)
    assert score["acc"] == pytest.approx(4 / 6)
    assert score["acc_plus"] == pytest.approx(1 / 3)
    assert score["score"] == pytest.approx(100 * (4 / 6 + 1 / 3))


def test_mme_response_with_a_tab_is_skipped_like_calculation_py():
    score = cm.mme_task_score([[("Yes", "yes\tindeed"), ("No", "no")]])
    assert (score["acc"], score["acc_plus"]) == (1.0, 0.0)


def test_mme_totals():
    perfect = [[("Yes", "yes"), ("No", "no")]]
    half = [[("Yes", "yes"), ("No", "yes")]]
    tasks = {name: perfect for name in cm.MME_TASKS["Perception"]}
    tasks.update({name: half for name in cm.MME_TASKS["Cognition"]})
    result = cm.mme_scores(tasks)
    assert result["Perception"] == pytest.approx(10 * 200)
    assert result["Cognition"] == pytest.approx(4 * 50)
    assert result["tasks"]["code_reasoning"] == {"acc": 0.5, "acc_plus": 0.0, "score": 50.0}


@pytest.mark.parametrize("text, label", [
    ("Yes", "yes"), ("No", "no"), ("no, there is not.", "no"), ("There is not a cat.", "no"),
    ("NO", "yes"), ("Yes. No.", "yes"), ("I see no,cat", "yes"), ("gibberish", "yes"),
])
def test_pope_label(text, label):
    assert cm.pope_label(text) == label


def test_pope_metrics():
    result = cm.pope_metrics(["Yes", "Yes", "No", "No", "yes"], ["yes", "no", "no", "yes", "yes"])
    assert (result["TP"], result["FP"], result["TN"], result["FN"]) == (2, 1, 1, 1)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["yes_ratio"] == pytest.approx(3 / 5)


@pytest.mark.parametrize("pred, expected", [
    ("B", "B"), ("B. dog", "B"), ("The answer is cat", "B"), ("It is a dog", "A"), ("(C)", "C"),
    ("xy", "xy"), ("(x", "(x"), (" C ", "C"), ("", ""),
])
def test_scienceqa_option(pred, expected):
    assert cm.scienceqa_option(pred, {"A": "dog", "B": "cat"}) == expected


def test_scienceqa_option_paren_and_period_forms():
    options = {"A": "dog", "B": "cat", "C": "cow"}
    assert cm.scienceqa_option("(B) bird", options) == "B"
    assert cm.scienceqa_option("x. bird", options) == "x"


@pytest.mark.parametrize("pred, expected", [("A", "A"), ("C.", "C"), ("it is 2.5", "B"), ("zzz", "zzz"),
                                         ("none", "A")])  # "one" is in "none"
def test_mmbench_option(pred, expected):
    assert cm.mmbench_option(pred, {"A": "one", "B": 2.5, "C": "x"}) == expected


def test_circular_accuracy():
    rows = [(1, "A", "A"), (1000001, "B", "B"),          # both copies right
            (2, "A", "A"), (1000002, "A", "C"),          # one copy wrong
            (3, "D", "D")]                               # no copies
    assert cm.circular_accuracy(rows) == pytest.approx(2 / 3)


@pytest.mark.parametrize("pred, correct", [
    ("(B) a cat", True), ("B", True), ("b.", True), ("Answer: (B)", True), ("(A) a dog", False),
    ("A cat", False), ("", True),   # empty answers match, as in the official check
])
def test_mvbench_check(pred, correct):
    assert cm.mvbench_correct(pred, "(B) a cat.") == correct


@pytest.mark.parametrize("total, world", [(10, 3), (2, 4), (7, 1), (0, 2)])
def test_shards_are_contiguous_and_cover_everything(total, world):
    items = list(range(total))
    parts = [list(shard(items, rank, world)) for rank in range(world)]
    assert sum(parts, []) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
