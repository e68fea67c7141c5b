"""chat_demo.py end to end in a subprocess, and its one-line user errors."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from paddlemix.models.internvl2 import InternVLChatModel, load_image, load_tokenizer
from reference import REPO_ROOT, load_tool, require_asset

DEMO = REPO_ROOT / "paddlemix" / "examples" / "internvl2" / "chat_demo.py"
QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = require_asset("tokenizers", "internvl2-1b")
    out = tmp_path_factory.mktemp("tiny-demo")
    load_tool("make_tiny_checkpoint").make_tiny_checkpoint(str(folder / "config.json"), str(folder), str(out))
    return str(out)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    pixels = np.random.RandomState(0).randint(0, 255, size=(300, 500, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def run_demo(*args, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, str(DEMO), *args], capture_output=True, text=True, timeout=600,
                          env=full_env, cwd=REPO_ROOT)


def test_demo_prints_the_same_answer_as_chat(tiny, photo):
    proc = run_demo("--model_name_or_path", tiny, "--image_path", photo, "--text", QUESTION,
                    "--max_num", "2", "--max_new_tokens", "12")
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = InternVLChatModel.from_pretrained(tiny)
    expected = model.chat(load_tokenizer(tiny), load_image(photo, max_num=2), QUESTION,
                          dict(max_new_tokens=12, do_sample=False))
    assert proc.stdout == expected + "\n"


def test_two_ranks_split_the_language_model_and_the_first_prints_the_answer(tiny, photo, tmp_path):
    """--tensor_parallel_degree 2 under paddle.distributed.launch: here two CPU processes over gloo."""
    args = ["--model_name_or_path", tiny, "--image_path", photo, "--text", QUESTION, "--max_num", "2",
            "--max_new_tokens", "12", "--device", "cpu"]
    proc = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--log_dir", str(tmp_path / "logs"),
                           "--nproc_per_node", "2", str(DEMO), *args, "--tensor_parallel_degree", "2"],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          cwd=REPO_ROOT)
    logs = [(tmp_path / "logs" / f"workerlog.{rank}").read_text(errors="replace") for rank in (0, 1)]
    assert proc.returncode == 0, logs[0][-3000:]
    expected = run_demo(*args).stdout.strip()
    assert expected and expected in logs[0].splitlines() and expected not in logs[1]
    alone = run_demo(*args, "--tensor_parallel_degree", "2")
    assert_one_line_error(alone, "--tensor_parallel_degree 2 needs 2 processes: run it under "
                                 "`python -m paddle.distributed.launch` with 2 devices (this run has 1)")


def assert_one_line_error(proc, pattern):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert pattern in errors[0]
    assert proc.stdout == ""


def test_missing_image(tiny, tmp_path):
    proc = run_demo("--model_name_or_path", tiny, "--image_path", str(tmp_path / "nope.jpg"))
    assert_one_line_error(proc, "nope.jpg")


def test_corrupt_image(tiny, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    proc = run_demo("--model_name_or_path", tiny, "--image_path", str(bad))
    assert_one_line_error(proc, "broken.jpg")


def test_hub_id_without_network(photo, tmp_path):
    proc = run_demo("--model_name_or_path", "OpenGVLab/InternVL2-1B", "--image_path", photo,
                    env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert_one_line_error(proc, "could not download 'OpenGVLab/InternVL2-1B'")


def test_unknown_dtype(tiny, photo):
    proc = run_demo("--model_name_or_path", tiny, "--image_path", photo, "--dtype", "float8")
    assert_one_line_error(proc, "unknown dtype 'float8'")


def test_unknown_local_path(photo):
    proc = run_demo("--model_name_or_path", "./no/such/dir", "--image_path", photo)
    assert_one_line_error(proc, "not a local directory")


def test_unknown_quantization(tiny, photo):
    proc = run_demo("--model_name_or_path", tiny, "--image_path", photo, "--quant", "int4")
    assert_one_line_error(proc, "unknown quantization 'int4'")
