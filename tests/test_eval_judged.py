"""The judged benchmarks (MathVista testmini, MM-Vet, LLaVA-Bench) and the judge client.

A scripted OpenAI-compatible endpoint on loopback plays the judge for the hand-computed cases;
the end-to-end test at the bottom uses the project's own server (`python -m paddlemix.serve`)
as the judge, so the client is proven against a real chat-completions implementation.
"""
import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from paddlemix.examples.internvl2.eval import evaluate
from paddlemix.examples.internvl2.eval.datafiles import DatasetError
from paddlemix.examples.internvl2.eval.judge import (Judge, JudgeError, chat_completions_url, judge_all,
                                                        judgments_path)
from paddlemix.examples.internvl2.eval.tasks import build_task
from paddlemix.examples.internvl2.eval.tasks.llava_bench import RULE, SYSTEM, parse_scores, review_prompt
from paddlemix.examples.internvl2.eval.tasks.mathvista import (EXTRACTION_EXAMPLES, edit_distance,
                                                               normalize_extraction, rule_extraction)
from paddlemix.examples.internvl2.eval.tasks.mmvet import DIGIT_REQUEST, GRADING_EXAMPLES, parse_grade
from test_eval_end_to_end import save_image, write_json, write_jsonl


# --- a scripted judge ----------------------------------------------------------------------
class ScriptedJudge:
    """An OpenAI-compatible endpoint whose replies come from ``reply(request) -> (status, content)``."""

    def __init__(self, reply):
        self.reply, self.requests = reply, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **request})
                status, content = outer.reply(request)
                if status == 200:
                    body = {"object": "chat.completion", "model": request["model"],
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                         "finish_reason": "stop"}]}
                else:
                    body = {"error": {"message": content, "type": "invalid_request_error"}}
                data = json.dumps(body).encode() if not isinstance(content, bytes) else content
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def scripted(reply):
    judge = ScriptedJudge(reply)
    try:
        yield judge
    finally:
        judge.close()


def replies(*contents):
    """Replies in order, one per request."""
    queue = list(contents)
    return lambda request: queue.pop(0) if isinstance(queue[0], tuple) else (200, queue.pop(0))


def user_text(request):
    return request["messages"][-1]["content"]


# --- the client -----------------------------------------------------------------------------
def test_the_client_posts_a_chat_completion_with_the_key_and_retries_server_errors():
    with scripted(replies((503, "busy"), (429, "rate limit"), "8 9")) as server:
        judge = Judge(server.url, "judge-x", api_key="sk-test", backoff=0)
        assert judge.ask([{"role": "user", "content": "hi"}], temperature=0.2, max_tokens=7) == "8 9"
    assert len(server.requests) == 3
    last = server.requests[-1]
    assert last["path"] == "/v1/chat/completions" and last["auth"] == "Bearer sk-test"
    assert (last["model"], last["temperature"], last["max_tokens"]) == ("judge-x", 0.2, 7)


def test_the_client_gives_one_sentence_for_a_refusal_an_outage_and_nonsense():
    with scripted(replies((401, "Incorrect API key provided"))) as server:
        with pytest.raises(JudgeError, match=r"HTTP 401: Incorrect API key provided.*\$OPENAI_API_KEY"):
            Judge(server.url, "m", backoff=0).ask([{"role": "user", "content": "x"}])
        assert len(server.requests) == 1  # a refusal is not retried
    with scripted(lambda request: (200, b'{"choices": []}')) as server:
        with pytest.raises(JudgeError, match="no answer after 3 tries.*not a chat completion"):
            Judge(server.url, "m", retries=2, backoff=0).ask([{"role": "user", "content": "x"}])
    with scripted(replies("x")) as server:
        closed = server.url
    with pytest.raises(JudgeError, match="no answer after 2 tries"):
        Judge(closed, "m", retries=1, backoff=0, timeout=5).ask([{"role": "user", "content": "x"}])
    assert isinstance(JudgeError("x"), OSError)  # the command line turns it into one line and exit 1


def test_urls_as_providers_print_them():
    assert chat_completions_url("https://api.openai.com/v1/") == "https://api.openai.com/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
    assert judgments_path("run", "org/model:1") == os.path.join("run", "judgments.org_model_1.jsonl")


# --- MathVista --------------------------------------------------------------------------------
CHOICES = ["3/11", "8/11", "6/11", "3/5"]


def problem(pid, question_type="free_form", answer_type="integer", answer="14", choices=None, precision=None,
            **metadata):
    meta = {"language": "english", "source": "FunctionQA", "category": "math-targeted-vqa", "task": "figure QA",
            "context": "function plot", "grade": "college", "skills": ["algebraic reasoning"], **metadata}
    return {"pid": pid, "question": f"q{pid}", "image": f"images/{pid}.jpg", "choices": choices,
            "unit": None, "precision": precision, "answer": answer, "question_type": question_type,
            "answer_type": answer_type, "metadata": meta, "query": f"Hint: ...\nQuestion: q{pid}"}


def test_mathvista_rule_extraction_as_upstream():
    mc = problem("1", "multi_choice", "text", "8/11", CHOICES)
    assert rule_extraction("8/11", mc) == "8/11"
    assert rule_extraction("B", mc) is None  # a letter is the judge's job upstream
    assert rule_extraction("", mc) == ""
    assert rule_extraction("14", problem("2")) == "14"
    assert rule_extraction(" 14\n", problem("2")) == "14"
    assert rule_extraction("14.0", problem("2")) is None
    assert rule_extraction("1.50", problem("3", answer_type="float", precision=2.0)) == "1.5"
    assert rule_extraction("The answer is 14", problem("2")) is None
    assert rule_extraction("[1, 2]", problem("4", answer_type="list")) is None


def test_mathvista_normalisation_as_calculate_score():
    assert normalize_extraction("(B) 8/11", CHOICES, "multi_choice", "text", None) == "8/11"
    assert normalize_extraction("(c)", CHOICES, "multi_choice", "text", None) == "6/11"
    assert normalize_extraction("c", CHOICES, "multi_choice", "text", None) == "3/5"  # not an option: nearest
    assert normalize_extraction("C", CHOICES, "multi_choice", "text", None) == "6/11"
    assert normalize_extraction("3/6", CHOICES, "multi_choice", "text", None) == "3/5"  # nearest by edits
    assert normalize_extraction("", CHOICES, "multi_choice", "text", None) == "3/5"  # the shortest
    assert normalize_extraction("", ["ab", "cd"], "multi_choice", "text", None) == "ab"  # a tie: the first
    assert normalize_extraction("14.7", None, "free_form", "integer", None) == "14"
    assert normalize_extraction("x", None, "free_form", "integer", None) is None
    assert normalize_extraction("1.456", None, "free_form", "float", 2.0) == "1.46"
    assert normalize_extraction("1.5", None, "free_form", "float", 1.0) == "1.5"
    assert normalize_extraction("[2007, 2008]", None, "free_form", "list", None) == "[2007, 2008]"
    assert (edit_distance("kitten", "sitting"), edit_distance("", "abc"), edit_distance("ab", "ab")) == (3, 3, 0)


def make_mathvista(root):
    problems = {
        "1": problem("1", "multi_choice", "text", "8/11", CHOICES, skills=["arithmetic reasoning"]),
        "2": problem("2"),
        "3": problem("3", answer_type="float", answer="1.45", precision=2.0, language="chinese"),
        "4": problem("4", answer_type="list", answer="[2007, 2008]"),
    }
    for pid in problems:
        save_image(f"{root}/data/MathVista/images/{pid}.jpg", int(pid))
    write_json(f"{root}/data/MathVista/annot_testmini.json", problems)
    return problems


def test_mathvista_judges_only_what_the_rules_cannot_and_scores_by_facet(tmp_path):
    make_mathvista(tmp_path)
    task = build_task("mathvista-testmini", str(tmp_path))
    items = task.load()
    assert [i.prompt for i in items] == [f"Hint: ...\nQuestion: q{p}" for p in "1234"]
    records = [{"key": i.key, "response": r, **i.meta} for i, r in
               zip(items, ["The correct answer is (B) 8/11.", "14", "about 1.449", "from 2007 to 2008"])]
    with scripted(replies("B", "1.449", "", "", "", "", "")) as server:
        judge = Judge(server.url, "m", backoff=0)
        judgments = {r["key"]: task.judge_one(r, judge) for r in records}
    assert [j["by"] for j in judgments.values()] == ["judge", "rule", "judge", "judge"]
    prompts = [user_text(r) for r in server.requests]
    assert prompts[0] == (EXTRACTION_EXAMPLES.strip() + "\n\nHint: ...\nQuestion: q1\n\n"
                          "The correct answer is (B) 8/11.\n\nExtracted answer: ")
    assert [r["max_tokens"] for r in server.requests] == [256] * 7 and server.requests[0]["temperature"] == 0
    assert len(server.requests) == 2 + 5  # five empty replies, then the official empty extraction
    assert judgments["4"] == {"extraction": "", "by": "judge"}
    metrics = task.score(records, judgments, str(tmp_path))
    # 1: B -> 8/11 right; 2: 14 right; 3: 1.449 -> 1.45 right; 4: '' is not the list
    assert (metrics["accuracy"], metrics["correct"], metrics["total"]) == (75.0, 3, 4)
    assert metrics["language"] == {"chinese": 100.0, "english": pytest.approx(66.67)}
    assert metrics["skills"] == {"algebraic reasoning": pytest.approx(66.67), "arithmetic reasoning": 100.0}
    assert metrics["question_type"] == {"free_form": pytest.approx(66.67), "multi_choice": 100.0}
    with open(tmp_path / metrics["scored"], encoding="utf-8") as f:
        scored = json.load(f)
    assert scored["3"]["prediction"] == "1.45" and scored["4"]["true_false"] is False


def test_mathvista_trims_a_prompt_the_judge_finds_too_long(tmp_path):
    make_mathvista(tmp_path)
    task = build_task("mathvista-testmini", str(tmp_path))
    item = task.load()[1]
    record = {"key": item.key, "response": "fourteen", **item.meta}
    with scripted(replies((400, "This model's maximum context length is 4097 tokens"), "14")) as server:
        assert task.judge_one(record, Judge(server.url, "m", backoff=0)) == {"extraction": "14", "by": "judge"}
    first, second = (user_text(r) for r in server.requests)
    assert second == first[len(first) - int(len(first) * 0.9):]


# --- LLaVA-Bench -----------------------------------------------------------------------------
def test_llava_bench_review_scores_as_parse_score():
    assert parse_scores("8 9\nAssistant 2 is better") == [8.0, 9.0]
    assert parse_scores("7.5,6") == [7.5, 6.0]
    for unreadable in ("8, 9", "Assistant 1: 8, Assistant 2: 9", "8  9", "", "eight nine", "9"):
        assert parse_scores(unreadable) is None, unreadable


def make_llava_bench(root):
    folder = f"{root}/data/llava-bench-in-the-wild"
    questions = [{"question_id": i, "image": f"{i // 2}.jpg", "text": f"What is in picture {i}?",
                  "category": category} for i, category in enumerate(["conv", "detail", "complex", "conv"])]
    for image in ("0.jpg", "1.jpg"):
        save_image(f"{folder}/images/{image}", int(image[0]))
    write_jsonl(f"{folder}/questions.jsonl", questions)
    write_jsonl(f"{folder}/context.jsonl", [{"id": "a", "image": "0.jpg", "caption": ["A cat.", "On a mat."]},
                                            {"id": "b", "image": "1.jpg", "caption": "A dog."}])
    write_jsonl(f"{folder}/answers_gpt4.jsonl", [{"question_id": i, "text": f"reference {i}"} for i in range(4)])


def test_llava_bench_reviews_and_relative_scores(tmp_path):
    make_llava_bench(tmp_path)
    task = build_task("llava-bench", str(tmp_path))
    items = task.load()
    assert items[0].prompt == "What is in picture 0? Please give a detailed answer."
    records = [{"key": i.key, "response": f"answer {n}", **i.meta} for n, i in enumerate(items)]
    # conv: (8, 6); detail: (10, 5); complex: unreadable three times; conv: (6, 6) after one unreadable review
    with scripted(replies("8 6\nfine", "10 5", "no", "no", "no", "Scores: 6 6", "6 6")) as server:
        judge = Judge(server.url, "m", backoff=0)
        judgments = {r["key"]: task.judge_one(r, judge) for r in records}
    first = server.requests[0]
    assert first["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": review_prompt(
        "A cat.\nOn a mat.", "What is in picture 0?", "reference 0", "answer 0")}]
    assert (first["temperature"], first["max_tokens"]) == (0.2, 1024)
    assert user_text(first).endswith(f"[System]\n{RULE}\n\n")
    metrics = task.score(records, judgments, str(tmp_path))
    # all: gpt4 mean 8, ours 17/3 -> 70.8 %
    assert metrics == {"relative_score": 70.8, "gpt4_score": 80.0, "model_score": 56.7, "count": 3,
                       "unreadable_reviews": 1,
                       "by_category": {"conv": {"relative_score": 85.7, "gpt4_score": 70.0, "model_score": 60.0,
                                                "count": 2},
                                       "detail": {"relative_score": 50.0, "gpt4_score": 100.0,
                                                  "model_score": 50.0, "count": 1}}}
    assert judgments["2"]["scores"] is None
    with pytest.raises(DatasetError, match="no readable score"):
        task.score(records[2:3], judgments, str(tmp_path))


def test_llava_bench_answers_file_is_upstreams(tmp_path):
    make_llava_bench(tmp_path)
    task = build_task("llava-bench", str(tmp_path))
    out = tmp_path / "results" / "my-model" / "llava-bench"
    out.mkdir(parents=True)
    records = [{"key": i.key, "response": "é", **i.meta} for i in task.load()]
    assert task.evaluate(records, str(out)) == {"submission": "llava_bench_results.jsonl"}
    lines = (out / "llava_bench_results.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[3]) == {"question_id": 3, "text": "é", "model_id": "my-model", "metadata": {}}


# --- MM-Vet ------------------------------------------------------------------------------------
def test_mmvet_grades_as_the_evaluator():
    assert parse_grade("0.7") == 0.7 and parse_grade("1.0 ") == 1.0 and parse_grade("0") == 0.0
    for unreadable in ("1.5", "-0.1", "Correct", "", "0.7|"):
        assert parse_grade(unreadable) is None, unreadable


def make_mmvet(root):
    rows = [{"question_id": i, "image": f"v1_{i}.png", "text": f"Question {i}?"} for i in range(3)]
    for i in range(3):
        save_image(f"{root}/data/mm-vet/images/v1_{i}.png", i)
    write_jsonl(f"{root}/data/mm-vet/llava-mm-vet.jsonl", rows)
    truth = {"v1_0": {"question": "Question 0?", "answer": "-1<AND>-5", "capability": ["math", "ocr"]},
             "v1_1": {"question": "Question 1?", "answer": "cat<OR>kitten", "capability": ["rec"]},
             "v1_2": {"question": "Question 2?", "answer": "blue", "capability": ["ocr", "math"]}}
    write_json(f"{root}/data/mm-vet/mm-vet.json", truth)


def test_mmvet_retries_unreadable_grades_warmer_then_scores_zero(tmp_path):
    make_mmvet(tmp_path)
    task = build_task("mmvet", str(tmp_path))
    records = [{"key": i.key, "response": f"pred {n}", **i.meta} for n, i in enumerate(task.load())]
    with scripted(replies("0.5", "maybe", "0.8 because", "x", "x", "x", "x", "x")) as server:
        judge = Judge(server.url, "m", backoff=0)
        judgments = {r["key"]: task.judge_one(r, judge) for r in records}
    prompts = [user_text(r) for r in server.requests]
    assert prompts[0] == GRADING_EXAMPLES + "\nQuestion 0? | -1 <AND> -5 | pred 0 | "
    assert prompts[2] == GRADING_EXAMPLES + "\nQuestion 1? | cat <OR> kitten | pred 1 | " + DIGIT_REQUEST
    assert [r["temperature"] for r in server.requests] == [0, 0, 0, 0, 0, 0.5, 1.0, 1.5]
    assert {r["max_tokens"] for r in server.requests} == {3}
    assert [judgments[k]["grade"] for k in "012"] == [0.5, 0.8, 0.0]
    assert judgments["2"]["tries"] == 5
    metrics = task.score(records, judgments, str(tmp_path))
    assert metrics["total"] == pytest.approx(43.3)
    assert metrics["capability"] == {"math": 25.0, "ocr": 25.0, "rec": 80.0}
    assert metrics["capability_integration"] == {"math_ocr": 25.0, "rec": 80.0}


# --- end to end -------------------------------------------------------------------------------
def run(tiny, root, dataset, *extra):
    return evaluate.main([tiny, dataset, "--data-root", str(root), "--out-dir", str(root / "out"),
                          "--max-new-tokens", "3", *extra])


@pytest.mark.parametrize("dataset,make", [("llava-bench", make_llava_bench), ("mmvet", make_mmvet)])
def test_without_a_judge_the_answers_wait_for_score_only(tiny_1b, tmp_path, dataset, make, monkeypatch, caplog):
    make(tmp_path)
    results = run(tiny_1b, tmp_path, dataset)
    assert "--score-only --judge-url" in results["metrics"]["how_to_score"]
    assert any("needs an LLM judge" in r.getMessage() for r in caplog.records)
    run_dir = tmp_path / "out" / os.path.basename(tiny_1b) / dataset
    assert (run_dir / results["metrics"]["submission"]).exists()
    answers = json.loads((run_dir / "answers.json").read_text(encoding="utf-8"))
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-1")
    grade = "9 8" if dataset == "llava-bench" else "0.5"
    with scripted(lambda request: (200, grade)) as server:
        scored = run(tiny_1b, tmp_path, dataset, "--score-only", "--judge-url", server.url,
                     "--judge-model", "grader", "--judge-key-env", "MY_JUDGE_KEY")
        again = run(tiny_1b, tmp_path, dataset, "--score-only", "--judge-url", server.url,
                    "--judge-model", "grader", "--judge-key-env", "MY_JUDGE_KEY")
    assert len(server.requests) == len(answers)  # the second scoring reuses the saved judgments
    assert {r["auth"] for r in server.requests} == {"Bearer sk-1"}
    assert {r["model"] for r in server.requests} == {"grader"}
    assert scored["metrics"] == again["metrics"] and scored["metrics"]["judge_model"] == "grader"
    expected = {"relative_score": 88.9} if dataset == "llava-bench" else {"total": 50.0}
    assert expected.items() <= scored["metrics"].items()
    assert scored["settings"] == results["settings"]


def test_score_only_refuses_missing_answers_and_unjudged_datasets(tmp_path):
    make_mmvet(tmp_path)
    with pytest.raises(DatasetError, match="no answers to score"):
        run("some/model", tmp_path, "mmvet", "--score-only", "--judge-url", "http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="needs --judge-url"):
        run("some/model", tmp_path, "mmvet", "--score-only")
    with pytest.raises(ValueError, match="scored without a judge"):
        run("some/model", tmp_path, "mme", "--judge-url", "http://127.0.0.1:9/v1")
    os.remove(tmp_path / "data/mm-vet/mm-vet.json")
    with pytest.raises(DatasetError, match="mm-vet.json"):  # checked before any answer is made
        run("some/model", tmp_path, "mmvet", "--judge-url", "http://127.0.0.1:9/v1", "--check")


def test_mathvista_with_the_projects_own_server_as_the_judge(tiny_1b, tmp_path):
    from test_serve import running_server

    make_mathvista(tmp_path)
    with running_server(tiny_1b, tmp_path / "server.log") as server:
        results = run(tiny_1b, tmp_path, "mathvista-testmini", "--judge-url", server.url + "/v1",
                      "--judge-model", server.model, "--judge-retries", "1")
    run_dir = tmp_path / "out" / os.path.basename(tiny_1b) / "mathvista-testmini"
    answers = json.loads((run_dir / "answers.json").read_text(encoding="utf-8"))
    judgments = {}
    with open(judgments_path(str(run_dir), server.model), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            judgments[row["key"]] = row["judgment"]
    assert sorted(judgments) == ["1", "2", "3", "4"]
    assert all(isinstance(j["extraction"], str) for j in judgments.values())
    assert any(j["by"] == "judge" for j in judgments.values())  # the server was asked, not only the rules
    task = build_task("mathvista-testmini", str(tmp_path))
    expected = task.score(answers, judgments, str(tmp_path))
    assert results["metrics"]["accuracy"] == expected["accuracy"] and results["metrics"]["total"] == 4


def test_two_ranks_answer_their_halves_and_only_rank_0_asks_the_judge(tiny_1b, tmp_path):
    make_mmvet(tmp_path)
    evaluate_py = os.path.join(os.path.dirname(evaluate.__file__), "evaluate.py")
    with scripted(lambda request: (200, "1.0")) as server:
        command = [sys.executable, evaluate_py, tiny_1b, "mmvet", "--max-new-tokens", "3", "--judge-url", server.url]
        ranks = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, PADDLE_TRAINER_ID=str(rank), PADDLE_TRAINERS_NUM="2"))
                 for rank in (0, 1)]
        outputs = [rank.communicate(timeout=600) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert outputs[1][0] == "" and "total" in outputs[0][0]
    folder = tmp_path / "results" / os.path.basename(tiny_1b) / "mmvet"
    for rank, keys in ((0, ["0", "1"]), (1, ["2"])):
        lines = (folder / f"answers.rank{rank}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line)["key"] for line in lines] == keys
    assert len(server.requests) == 3
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    assert results["metrics"]["total"] == 100.0 and results["metrics"]["judge_model"] == "gpt-4-0613"


def test_judging_resumes_after_a_torn_line_and_keeps_judge_models_apart(tmp_path):
    records = [{"key": str(i)} for i in range(3)]
    asked = []

    def judge_one(record, judge):
        asked.append((judge.model, record["key"]))
        return {"grade": int(record["key"])}

    path = judgments_path(str(tmp_path), "m1")
    with open(path, "w", encoding="utf-8") as f:  # "0" judged, "1" cut mid-line by a crash
        f.write('{"key": "0", "judgment": {"grade": 0}}\n{"key": "1", "judgm')
    judged = judge_all(records, str(tmp_path), Judge("http://unused", "m1"), judge_one, desc="t")
    assert judged == {str(i): {"grade": i} for i in range(3)} and asked == [("m1", "1"), ("m1", "2")]
    lines = open(path, encoding="utf-8").read().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["0", "1", "2"]
    judge_all(records, str(tmp_path), Judge("http://unused", "m1"), judge_one, desc="t")
    judge_all(records, str(tmp_path), Judge("http://unused", "m2"), judge_one, desc="t")
    assert asked[2:] == [("m2", "0"), ("m2", "1"), ("m2", "2")]  # another judge starts afresh
