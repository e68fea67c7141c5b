"""A missing optional dependency is one sentence naming `pip install -e .[extra]`, and exit code 1."""
import os
import subprocess
import sys

import pytest

from paddlemix.extras import MissingExtraError, require
from paddlemix.examples.internvl2.eval.tasks import build_task
from paddlemix.models.internvl2.processing import read_video_frames
from reference import REPO_ROOT
from test_eval_end_to_end import make_mmbench_dev

CLIP = REPO_ROOT / "paddlemix" / "demo_images" / "demo_clip.mp4"


def _without(monkeypatch, *modules):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # the next import of it raises ImportError


def test_require_names_the_extra(monkeypatch):
    assert require("json", "serve").dumps([1]) == "[1]"
    _without(monkeypatch, "uvicorn")
    with pytest.raises(MissingExtraError, match=r"^uvicorn is not installed; it comes with the 'serve' extra: "
                                                r"pip install -e \.\[serve\]$"):
        require("uvicorn", "serve")


def test_the_server_without_its_extra_says_so_in_one_line(tiny_1b):
    code = ("import sys; sys.modules['uvicorn'] = None\n"
            "from paddlemix.serve.__main__ import main\nfrom paddlemix.cli import run_main\n"
            f"run_main(main, ['--model_name_or_path', {tiny_1b!r}])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env=dict(os.environ))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: uvicorn is not installed; it comes with the 'serve' extra: pip install -e .[serve]"]


def test_mmbench_without_pandas_names_the_eval_extra(tmp_path, monkeypatch):
    make_mmbench_dev(tmp_path)
    _without(monkeypatch, "pandas")
    with pytest.raises(MissingExtraError, match=r"pip install -e \.\[eval\]"):
        build_task("mmbench-dev-en", str(tmp_path), 8).load()


def test_decord_asked_for_but_missing_names_the_video_extra(monkeypatch):
    _without(monkeypatch, "decord")
    with pytest.raises(MissingExtraError, match=r"pip install -e \.\[video\]"):
        read_video_frames(CLIP, num_segments=2, backend="decord")
    assert len(read_video_frames(CLIP, num_segments=2)) == 2  # by default OpenCV reads it instead
