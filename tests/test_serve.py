"""The OpenAI-compatible server on a tiny checkpoint: the official `openai` client, every bad input, and a load test.

The server runs as its own process on 127.0.0.1 and is stopped at the end of the module. Answers are
greedy, so every one must equal what `model.chat()` gives for the same prompt in this process.
"""
import asyncio
import base64
import contextlib
import ctypes
import io
import json
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import paddle
import psutil
import pytest
from PIL import Image

from paddlemix.models.internvl2 import load_image
from reference import REPO_ROOT

openai = pytest.importorskip("openai")

DEMO_IMAGE = REPO_ROOT / "paddlemix" / "demo_images" / "examples_image1.jpg"
DEMO_IMAGE2 = REPO_ROOT / "paddlemix" / "demo_images" / "examples_image2.jpg"
MAX_NUM = 2  # tiles per image on the test server: small, fast prompts
SERVER_ARGS = ("--max_num", str(MAX_NUM), "--max_images", "4", "--max_image_mb", "0.5",
               "--max_image_pixels", "1000000", "--max_request_mb", "4", "--max_batch", "8", "--max_queue", "64")
# Load test: how many requests, how many at once, how long at most (loopback only).
LOAD_REQUESTS, LOAD_CONCURRENCY, LOAD_DEADLINE_S = 200, 16, 180
# Measured: RSS wanders within ~60 MiB over 1800 requests (malloc reuse, not a leak).
RSS_GROWTH_LIMIT_MB = 100


# --- helpers shared with the other test_serve_* modules ----------------------------
def _die_with_parent():
    """Linux: the server gets SIGTERM if pytest dies, so no server outlives the test run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path
    model: str

    def log_tail(self, chars=4000):
        return self.log.read_text(errors="replace")[-chars:]


@contextlib.contextmanager
def running_server(checkpoint, log_path, *args, start_timeout=180):
    """`python -m paddlemix.serve` on a free loopback port; terminated (then killed) on exit."""
    port = free_port()
    command = [sys.executable, "-m", "paddlemix.serve", "--model_name_or_path", checkpoint, "--host", "127.0.0.1",
               "--port", str(port), *args]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                   preexec_fn=_die_with_parent)
    server = Server(process, f"http://127.0.0.1:{port}", Path(log_path), checkpoint)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            assert process.poll() is None, f"server exited with {process.returncode}:\n{server.log_tail()}"
            assert time.monotonic() < deadline, f"server did not start in {start_timeout} s:\n{server.log_tail()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def data_url(image):
    """A base64 data: URL of an image file path (sent as is) or a PIL image (as PNG, lossless)."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        payload, mime = buffer.getvalue(), "image/png"
    else:
        payload, mime = Path(image).read_bytes(), "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(payload).decode()}"


def image_part(image):
    return {"type": "image_url", "image_url": {"url": data_url(image)}}


def noise_image(width, height, seed):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


def assert_openai_error(response, status):
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


# --- fixtures (tiny_1b, model and tokenizer come from conftest.py) --------------------
@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    noise_image(120, 90, 3).save(folder / "allowed.png")
    return folder


@pytest.fixture(scope="module")
def server(tiny_1b, media_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with running_server(tiny_1b, log, *SERVER_ARGS, "--allowed_local_media_path", str(media_dir)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(model, tokenizer):
    """model.chat() in this process: the answers the server must give."""

    def chat(images, question, max_tokens, history=None, num_patches_list=None):
        pixel_values = None
        if images:
            tiles = [load_image(image, max_num=MAX_NUM) for image in images]
            pixel_values = paddle.concat(tiles)
            num_patches_list = num_patches_list or [int(t.shape[0]) for t in tiles]
        return model.chat(tokenizer, pixel_values, question, dict(max_new_tokens=max_tokens, do_sample=False),
                          history=history, num_patches_list=num_patches_list)

    return chat


# --- the official client ------------------------------------------------------------------
def test_models_and_health(server, client):
    assert [model.id for model in client.models.list().data] == [server.model]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_answers_equal_chat(server, client, reference):
    text = client.chat.completions.create(model=server.model, max_tokens=12,
                                          messages=[{"role": "user", "content": "Hello, who are you?"}])
    assert text.choices[0].message.content == reference(None, "Hello, who are you?", 12)
    assert text.choices[0].message.role == "assistant"
    usage = text.usage
    assert usage.completion_tokens == 12 and usage.total_tokens == usage.prompt_tokens + 12
    assert text.choices[0].finish_reason == "length"

    with_image = client.chat.completions.create(model=server.model, max_tokens=10, messages=[
        {"role": "user", "content": [image_part(DEMO_IMAGE), {"type": "text", "text": "Describe the image."}]}])
    assert with_image.choices[0].message.content == reference([DEMO_IMAGE], "Describe the image.", 10)
    # 256 <IMG_CONTEXT> tokens per tile, plus <img> and </img>.
    assert with_image.usage.prompt_tokens > 256 + usage.prompt_tokens


def test_streamed_answer_equals_the_answer(server, client):
    messages = [{"role": "user", "content": [image_part(DEMO_IMAGE2), {"type": "text", "text": "What is this?"}]}]
    answer = client.chat.completions.create(model=server.model, max_tokens=24, messages=messages)
    stream = client.chat.completions.create(model=server.model, max_tokens=24, messages=messages, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == answer.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == answer.choices[0].finish_reason
    assert chunks[-1].usage.model_dump() == answer.usage.model_dump()


def test_multi_image(server, client, reference):
    second = noise_image(200, 160, 1)
    response = client.chat.completions.create(model=server.model, max_tokens=10, messages=[{"role": "user", "content": [
        image_part(DEMO_IMAGE), image_part(second), {"type": "text", "text": "What differs?"}]}])
    expected = reference([DEMO_IMAGE, second], "Image-1: <image>\nImage-2: <image>\nWhat differs?", 10)
    assert response.choices[0].message.content == expected


def test_multi_turn_history(server, client, reference):
    first = [{"role": "user", "content": [image_part(DEMO_IMAGE), {"type": "text", "text": "What is it?"}]}]
    answer = client.chat.completions.create(model=server.model, max_tokens=8, messages=first)
    answer_text = answer.choices[0].message.content
    follow_up = first + [{"role": "assistant", "content": answer_text}, {"role": "user", "content": "And then?"}]
    response = client.chat.completions.create(model=server.model, max_tokens=8, messages=follow_up)
    expected = reference([DEMO_IMAGE], "And then?", 8, history=[("<image>\nWhat is it?", answer_text)])
    assert response.choices[0].message.content == expected


def test_video_frames_and_local_file(server, client, reference, media_dir):
    frames = [noise_image(160, 120, seed) for seed in (10, 11, 12)]
    response = client.chat.completions.create(model=server.model, max_tokens=8, messages=[{"role": "user", "content": [
        {"type": "video", "video": [data_url(frame) for frame in frames]}, {"type": "text", "text": "What happens?"}]}])
    # One tile per frame, as the model card reads videos.
    pixel_values = [np.asarray(load_image(frame, max_num=1)) for frame in frames]
    assert all(p.shape[0] == 1 for p in pixel_values)
    question = "Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nWhat happens?"
    assert response.choices[0].message.content == reference(frames, question, 8, num_patches_list=[1, 1, 1])

    local = client.chat.completions.create(model=server.model, max_tokens=6, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"file://{media_dir / 'allowed.png'}"}},
        {"type": "text", "text": "Describe."}]}])
    assert local.choices[0].message.content == reference([media_dir / "allowed.png"], "Describe.", 6)


def test_stop_sequences_and_seeded_sampling(server, client):
    messages = [{"role": "user", "content": "Tell me a story."}]
    full = client.chat.completions.create(model=server.model, max_tokens=16, messages=messages)
    words = full.choices[0].message.content.split()
    stop = words[len(words) // 2]
    cut = client.chat.completions.create(model=server.model, max_tokens=16, messages=messages, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full.choices[0].message.content.split(stop)[0].strip()
    streamed = client.chat.completions.create(model=server.model, max_tokens=16, messages=messages, stop=stop,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == \
        cut.choices[0].message.content

    sampled = [client.chat.completions.create(model=server.model, max_tokens=12, messages=messages, temperature=1.5,
                                              top_p=0.9, seed=1234).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_openai_client_sees_errors(server, client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.BadRequestError, match="too_many_images|at most 4"):
        client.chat.completions.create(model=server.model, messages=[
            {"role": "user", "content": [image_part(noise_image(32, 32, i)) for i in range(5)]}])


# --- bad inputs -------------------------------------------------------------------
def _body(server, **overrides):
    body = {"model": server.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    body.update(overrides)
    return json.dumps(body)


def _user(*parts):
    return [{"role": "user", "content": list(parts)}]


def _truncated_jpeg():
    return "data:image/jpeg;base64," + base64.b64encode(DEMO_IMAGE.read_bytes()[:3000]).decode()


def bad_requests(server):
    """(name, body, expected status, expected error code or None) for every input the server must refuse."""
    url = lambda text: {"type": "image_url", "image_url": {"url": text}}  # noqa: E731
    noise = lambda w, h: image_part(noise_image(w, h, 0))  # noqa: E731
    solid_big = image_part(Image.new("RGB", (1200, 1000), "white"))
    return [
        ("malformed json", '{"model": "x", "messages": [', 400, None),
        ("not an object", "[1, 2]", 400, None),
        ("deeply nested", "[" * 50000, 400, None),
        ("no messages", json.dumps({"model": server.model}), 400, None),
        ("wrong type: max_tokens", _body(server, max_tokens="4"), 400, None),
        ("wrong type: content", _body(server, messages=[{"role": "user", "content": 5}]), 400, None),
        ("unknown part type", _body(server, messages=_user({"type": "audio"})), 400, None),
        ("unknown role", _body(server, messages=[{"role": "tool", "content": "x"}]), 400, None),
        ("temperature out of range", _body(server, temperature=3), 400, None),
        ("n > 1", _body(server, n=2), 400, None),
        ("ends with assistant", _body(server, messages=[{"role": "user", "content": "a"},
                                                        {"role": "assistant", "content": "b"}]), 400, None),
        ("image tag in text", _body(server, messages=[{"role": "user", "content": "<image> hi"}]), 400, None),
        ("unknown model", _body(server, model="gpt-4o"), 404, "model_not_found"),
        ("too many images", _body(server, messages=_user(*[noise(16, 16)] * 5)), 400, "too_many_images"),
        ("image over the byte cap", _body(server, messages=_user(noise(500, 500))), 400, "image_too_large"),
        ("image over the pixel cap", _body(server, messages=_user(solid_big)), 400, "image_too_large"),
        ("undecodable image", _body(server, messages=_user(url("data:image/png;base64,"
                                                               + base64.b64encode(b"not an image").decode()))),
         400, "invalid_image"),
        ("truncated image", _body(server, messages=_user(url(_truncated_jpeg()))), 400, "invalid_image"),
        ("not base64", _body(server, messages=_user(url("data:image/png;base64,@@@@"))), 400, "invalid_image"),
        ("remote url", _body(server, messages=_user(url("http://127.0.0.1:1/x.png"))), 400, "unsupported_url"),
        ("path outside the media folder", _body(server, messages=_user(url("/etc/hostname"))), 400,
         "unsupported_url"),
        ("prompt longer than the context", _body(server, messages=_user(
            noise(64, 64), {"type": "text", "text": "word " * 33000})), 400, "context_length_exceeded"),
        ("answer beyond the context", _body(server, max_tokens=40000), 400, "context_length_exceeded"),
    ]


def test_every_bad_input_gets_a_4xx_and_the_server_goes_on(server, reference):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for name, body, status, code in bad_requests(server):
            response = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
            error = assert_openai_error(response, status)
            assert code is None or error["code"] == code, (name, error)
            good = http.post("/v1/chat/completions", content=_body(server))
            assert good.status_code == 200, (name, good.text)
        assert_openai_error(http.post("/v1/chat/completions", content=b"x" * (5 * 2 ** 20)), 413)
        assert_openai_error(http.get("/no/such/route"), 404)
        assert_openai_error(http.get("/v1/chat/completions"), 405)
        answer = http.post("/v1/chat/completions", content=_body(server)).json()
    assert answer["choices"][0]["message"]["content"] == reference(None, "Hi", 4)
    assert server.process.poll() is None
    assert "Traceback" not in server.log_tail(200_000)


# --- load ---------------------------------------------------------------------------
def _load_plan(server):
    """LOAD_REQUESTS requests, every tenth malformed, in a fixed shuffled order, with their expectations."""
    small = noise_image(150, 100, 5)
    valid = [
        ([], "Hello, who are you?"), ([], "Count to ten."), ([], "What colour is the sky?"),
        ([DEMO_IMAGE], "Describe the image."),
        ([DEMO_IMAGE, small], "Image-1: <image>\nImage-2: <image>\nCompare them."),
    ]
    kinds = ("malformed json", "wrong type: max_tokens", "wrong type: content", "unknown model", "too many images",
             "undecodable image", "image over the pixel cap")
    malformed = [(body, status) for name, body, status, _ in bad_requests(server) if name in kinds]
    plan = []
    for index in range(LOAD_REQUESTS):
        if index % 10 == 9:
            plan.append(("bad",) + malformed[index // 10 % len(malformed)])
        else:
            images, question = valid[index % len(valid)]
            text = question.split("\n")[-1]
            content = [image_part(image) for image in images] + [{"type": "text", "text": text}]
            plan.append(("good", _body(server, messages=[{"role": "user", "content": content}], max_tokens=6),
                         index % len(valid)))
    random.Random(0).shuffle(plan)
    return plan, valid


async def _fire(server, plan):
    """Send the plan at LOAD_CONCURRENCY at once; (status, body, seconds) per request, in plan order."""
    gate = asyncio.Semaphore(LOAD_CONCURRENCY)
    limits = httpx.Limits(max_connections=LOAD_CONCURRENCY)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:

        async def one(body):
            async with gate:
                start = time.perf_counter()
                response = await http.post("/v1/chat/completions", content=body,
                                           headers={"Content-Type": "application/json"})
                return response.status_code, response.text, time.perf_counter() - start

        return await asyncio.wait_for(asyncio.gather(*(one(item[1]) for item in plan)), LOAD_DEADLINE_S)


def test_load(server, reference):
    plan, valid = _load_plan(server)
    expected = [reference(images, question, 6) for images, question in valid]
    asyncio.run(_fire(server, plan[:20]))  # warm-up: first-call allocations are not growth
    process = psutil.Process(server.process.pid)
    rss_before = process.memory_info().rss
    start = time.perf_counter()
    results = asyncio.run(_fire(server, plan))
    elapsed = time.perf_counter() - start
    rss_after = process.memory_info().rss

    for (kind, _, expectation), (status, text, _) in zip(plan, results):
        if kind == "good":
            assert status == 200, text
            assert json.loads(text)["choices"][0]["message"]["content"] == expected[expectation]
        else:
            assert 400 <= status < 500 and status == expectation, text
            assert "Traceback" not in text and set(json.loads(text)["error"]) == {"message", "type", "param", "code"}
    assert server.process.poll() is None
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    latencies = sorted(seconds for _, _, seconds in results)
    growth_mb = (rss_after - rss_before) / 2 ** 20
    print(f"\nserve load: {len(plan)} requests ({sum(k == 'bad' for k, _, _ in plan)} malformed) at concurrency "
          f"{LOAD_CONCURRENCY} in {elapsed:.1f} s: {len(plan) / elapsed:.1f} req/s, "
          f"p50 {1000 * latencies[len(latencies) // 2]:.0f} ms, p95 {1000 * latencies[int(len(latencies) * 0.95)]:.0f} "
          f"ms, RSS {rss_before / 2 ** 20:.0f} -> {rss_after / 2 ** 20:.0f} MiB")
    assert growth_mb < RSS_GROWTH_LIMIT_MB
