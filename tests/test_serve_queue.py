"""A full queue answers 429 at once, and a client that disconnects frees its place (queued or decoding).

The server decodes one request at a time and lets one wait (--max_batch 1 --max_queue 1), so a
long answer holds the model and the next request holds the queue. Long answers are cancelled by
their client here; were they not, the follow-up requests below would wait minutes and time out.
"""
import json
import threading
import time

import httpx
import pytest

from test_serve import assert_openai_error, running_server

LONG = 3000  # tokens: tens of seconds of decoding on the tiny checkpoint unless cancelled
FOLLOW_UP_LIMIT_S = 15  # what a short request may take once the long one is cancelled


@pytest.fixture(scope="module")
def server(tiny_1b, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-queue-log") / "server.log"
    with running_server(tiny_1b, log, "--max_batch", "1", "--max_queue", "1") as running:
        yield running


def body(server, max_tokens, stream=False):
    return json.dumps({"model": server.model, "max_tokens": max_tokens, "stream": stream,
                       "messages": [{"role": "user", "content": "Tell me a long story."}]})


def post(server, max_tokens, timeout=60):
    return httpx.post(server.url + "/v1/chat/completions", content=body(server, max_tokens), timeout=timeout)


def test_full_queue_is_429_and_a_closed_stream_frees_the_model(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", content=body(server, LONG, stream=True)) as running:
            assert running.status_code == 200
            lines = running.iter_lines()
            assert any('"content": "' in line and '"content": ""' not in line for line in lines)  # it is decoding

            waiting = {}
            queued = threading.Thread(target=lambda: waiting.update(response=post(server, 4)))
            queued.start()
            time.sleep(1.0)  # the short request now holds the only queue place
            start = time.monotonic()
            refused = post(server, 4)
            assert time.monotonic() - start < 2.0
            error = assert_openai_error(refused, 429)
            assert error["type"] == "rate_limit_error"
            closed_at = time.monotonic()
        # Leaving the block closed the stream: the long answer stops and the queued one runs.
        queued.join(FOLLOW_UP_LIMIT_S + 5)
        assert not queued.is_alive() and waiting["response"].status_code == 200
        assert time.monotonic() - closed_at < FOLLOW_UP_LIMIT_S
    assert post(server, 4).status_code == 200
    assert server.process.poll() is None


def test_a_client_that_times_out_frees_the_model(server):
    with pytest.raises(httpx.ReadTimeout):
        post(server, LONG, timeout=2)
    start = time.monotonic()
    assert post(server, 4).status_code == 200
    assert time.monotonic() - start < FOLLOW_UP_LIMIT_S


def test_a_client_that_leaves_the_queue_frees_its_place(server):
    """A waiting request whose client gives up is dropped, so a new one is not refused for it."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", content=body(server, LONG, stream=True)) as running:
            lines = running.iter_lines()  # kept: a discarded line iterator would close the connection
            next(line for line in lines if '"content": "' in line)
            with pytest.raises(httpx.ReadTimeout):
                post(server, 4, timeout=1.5)  # waits in the queue, then its client leaves
            time.sleep(0.5)
            waiting = {}
            queued = threading.Thread(target=lambda: waiting.update(response=post(server, 4)))
            queued.start()
            time.sleep(1.0)
            assert queued.is_alive()  # queued, not refused: the abandoned request's place was freed
        queued.join(FOLLOW_UP_LIMIT_S + 5)
        assert waiting["response"].status_code == 200
