"""chat_demo_video.py and chat_demo.py --stream end to end in a subprocess, and the video demo's one-line errors."""
import os
import subprocess
import sys

import pytest

from paddlemix.models.internvl2 import InternVLChatModel, load_image, load_tokenizer, load_video
from reference import REPO_ROOT, load_tool, require_asset
from test_chat_demo import assert_one_line_error

EXAMPLES = REPO_ROOT / "paddlemix" / "examples" / "internvl2"
CLIP = str(REPO_ROOT / "paddlemix" / "demo_images" / "demo_clip.mp4")
IMAGE = str(REPO_ROOT / "paddlemix" / "demo_images" / "examples_image2.jpg")
QUESTION = "Please describe this video in detail."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = require_asset("tokenizers", "internvl2-1b")
    out = tmp_path_factory.mktemp("tiny-video-demo")
    load_tool("make_tiny_checkpoint").make_tiny_checkpoint(str(folder / "config.json"), str(folder), str(out))
    return str(out)


def run(script, *args):
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ), cwd=REPO_ROOT)


@pytest.mark.parametrize("stream", [False, True])
def test_video_demo_prints_the_chat_answer(tiny, stream):
    proc = run("chat_demo_video.py", "--model_name_or_path", tiny, "--video_path", CLIP, "--text", QUESTION,
               "--num_segments", "4", "--bound", "0.5", "3.5", "--max_new_tokens", "10",
               *(["--stream"] if stream else []))
    assert proc.returncode == 0, proc.stderr[-2000:]
    pixel_values, num_patches_list = load_video(CLIP, bound=(0.5, 3.5), num_segments=4, max_num=1)
    question = "".join(f"Frame{i + 1}: <image>\n" for i in range(4)) + QUESTION
    expected = InternVLChatModel.from_pretrained(tiny).chat(
        load_tokenizer(tiny), pixel_values, question, dict(max_new_tokens=10, do_sample=False),
        num_patches_list=num_patches_list)
    # The stream is the decoded text as generated; chat() strips the answer.
    assert (proc.stdout.strip() + "\n" if stream else proc.stdout) == expected + "\n"


def test_image_demo_streams_the_chat_answer(tiny):
    proc = run("chat_demo.py", "--model_name_or_path", tiny, "--image_path", IMAGE, "--max_num", "2",
               "--max_new_tokens", "10", "--stream")
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = InternVLChatModel.from_pretrained(tiny).chat(
        load_tokenizer(tiny), load_image(IMAGE, max_num=2), "Please describe this image in detail.",
        dict(max_new_tokens=10, do_sample=False))
    assert proc.stdout.strip() == expected


def test_video_demo_errors_are_one_line(tiny, tmp_path):
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 20)
    cases = [
        (["--video_path", str(tmp_path / "nope.mp4")], "nope.mp4': file not found"),
        (["--video_path", str(corrupt)], "broken.mp4': not a readable video file"),
        (["--video_path", CLIP, "--bound", "10", "12"], "bound (10, 12) s is outside the video (0 to 4.00 s)"),
        (["--video_path", CLIP, "--num_segments", "0"], "--num_segments must be at least 1, got 0"),
    ]
    for args, message in cases:
        assert_one_line_error(run("chat_demo_video.py", "--model_name_or_path", tiny, *args), message)
