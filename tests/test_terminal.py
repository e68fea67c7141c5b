"""What a user's terminal shows: progress bars, our log lines and the answer, nothing else by default.

Paddle, paddleformers, transformers, setuptools and sentencepiece all print notices while they are
imported or used; the five command lines hold them back unless --verbose (--log_level debug).
"""
import os
import re
import subprocess
import sys

from reference import REPO_ROOT, load_tool, require_asset
from test_eval_end_to_end import make_textvqa
from test_finetune_data import write_synthetic_dataset
from test_serve import running_server

EXAMPLES = REPO_ROOT / "paddlemix" / "examples" / "internvl2"
IMAGE = REPO_ROOT / "paddlemix" / "demo_images" / "examples_image1.jpg"
CLIP = REPO_ROOT / "paddlemix" / "demo_images" / "demo_clip.mp4"

# Lines a default run may show on stderr.
PROGRESS = re.compile(r"\d+%\|.*\|")  # tqdm
OUR_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING|ERROR) (paddlemix|internvl_chat_finetune|uvicorn)")
# Notices the third-party packages print today; none may reach a default run.
THIRD_PARTY = ["OMP_NUM_THREADS", "ccache", "PyTorch was not found", "distutils", "compatibility issues",
               "Using download source", "absl", "Warning", "FLAGS_flash_attn_version"]
ALWAYS_HELD = "compatibility issues between PaddlePaddle and PyTorch"  # paddleformers says it at every import


def _run(script, *args):
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600,
                          cwd=REPO_ROOT, env=dict(os.environ))


def foreign_lines(stderr):
    """The stderr lines that are neither progress bars nor our log lines."""
    stderr = stderr.replace("\x1b[A", "")  # tqdm moves the cursor up between nested bars
    lines = [line.strip() for line in re.split(r"[\r\n]", stderr)]
    return [line for line in lines if line and not PROGRESS.search(line) and not OUR_LOG.match(line)]


def assert_quiet(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert foreign_lines(proc.stderr) == []


def test_chat_demo_shows_the_answer_and_progress_only_and_more_with_verbose(tiny_1b):
    args = ["--model_name_or_path", tiny_1b, "--image_path", str(IMAGE), "--max_num", "1", "--max_new_tokens", "3"]
    proc = _run(EXAMPLES / "chat_demo.py", *args)
    assert_quiet(proc)
    assert len(proc.stdout.splitlines()) == 1  # the answer
    verbose = _run(EXAMPLES / "chat_demo.py", *args, "--verbose")
    assert verbose.returncode == 0 and ALWAYS_HELD in verbose.stderr


def test_the_internlm2_tokenizers_cpp_warnings_are_held_too(tmp_path):
    """sentencepiece warns from C++ (absl) about the InternLM2 model's null piece."""
    folder = require_asset("tokenizers", "internvl2-2b")
    load_tool("make_tiny_checkpoint").make_tiny_checkpoint(str(folder / "config.json"), str(folder), str(tmp_path))
    assert_quiet(_run(EXAMPLES / "chat_demo.py", "--model_name_or_path", str(tmp_path), "--text", "Hi",
                      "--max_new_tokens", "2"))


def test_video_demo_is_quiet(tiny_1b):
    assert_quiet(_run(EXAMPLES / "chat_demo_video.py", "--model_name_or_path", tiny_1b, "--video_path", str(CLIP),
                      "--num_segments", "2", "--max_new_tokens", "3"))


def test_evaluate_is_quiet(tiny_1b, tmp_path):
    make_textvqa(tmp_path)
    proc = _run(EXAMPLES / "eval" / "evaluate.py", tiny_1b, "vqa-textvqa-val", "--data-root", str(tmp_path),
                "--out-dir", str(tmp_path / "out"), "--max-new-tokens", "2")
    assert_quiet(proc)
    assert "results:" in proc.stdout


def test_finetune_shows_our_lines_and_the_trainers_only(tiny_1b, tmp_path):
    meta = write_synthetic_dataset(tmp_path / "data")
    proc = _run(EXAMPLES / "internvl_chat_finetune.py", "--model_name_or_path", tiny_1b, "--meta_path", meta,
                "--output_dir", str(tmp_path / "out"), "--max_dynamic_patch", "1", "--video_frames", "2",
                "--max_seq_length", "1024", "--per_device_train_batch_size", "1", "--logging_steps", "1",
                "--max_steps", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loss: " in proc.stderr and "Configuration Arguments" in proc.stderr  # the Trainer's lines stay
    assert [line for line in foreign_lines(proc.stderr) if any(noise in line for noise in THIRD_PARTY)] == []


def test_server_log_is_ours_and_uvicorns(tiny_1b, tmp_path):
    with running_server(tiny_1b, tmp_path / "server.log") as server:
        pass
    log = server.log.read_text(errors="replace")
    assert "serving" in log and foreign_lines(log) == [], log[-3000:]
