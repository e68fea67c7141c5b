"""The server's pieces without a server: messages -> chat()'s prompt, stream pieces, image limits, batching.

`model` and `tokenizer` are conftest.py's tiny InternVL2-1B.
"""
import base64
import io
import os

import numpy as np
import paddle
import pytest
from PIL import Image

from paddlemix.models.internvl2 import load_image
from paddlemix.serve.answer import final_text, settled_text
from paddlemix.serve.engine import Sampling
from paddlemix.serve.errors import APIError
from paddlemix.serve.media import MediaLimits, image_tiles
from paddlemix.serve.prompt import build_prompt
from paddlemix.serve.protocol import parse_request

LIMITS = MediaLimits(max_num=2)
GREEDY = dict(max_new_tokens=1)


def png_url(seed, size=(40, 30)):
    buffer = io.BytesIO()
    Image.fromarray(np.random.RandomState(seed).randint(0, 256, size[::-1] + (3,), dtype=np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image(seed):
    return {"type": "image_url", "image_url": {"url": png_url(seed)}}


def messages(*items):
    return parse_request({"model": "m", "messages": list(items)}).messages


class _Recorded(Exception):
    pass


def chat_prompt_ids(model, tokenizer, monkeypatch, *args, **kwargs):
    """The input ids model.chat() builds for these arguments (generation is skipped)."""
    seen = {}

    def record(input_ids=None, **_):
        seen["ids"] = np.asarray(input_ids).tolist()
        raise _Recorded()

    monkeypatch.setattr(model, "generate", record)
    with pytest.raises(_Recorded):
        model.chat(tokenizer, *args, **kwargs)
    monkeypatch.undo()
    return seen["ids"]


def served_ids(model, tokenizer, items):
    prompt = build_prompt(model, messages(*items), LIMITS)
    return tokenizer(prompt.query, return_tensors="np")["input_ids"].tolist(), prompt


def pixels(*seeds):
    return paddle.concat([load_image(Image.open(io.BytesIO(base64.b64decode(png_url(s).split(",")[1]))), max_num=2)
                          for s in seeds])


def test_prompts_equal_chat_prompts(model, tokenizer, monkeypatch):
    question = [{"role": "user", "content": [image(1), {"type": "text", "text": "Hi"}]}]
    ids, prompt = served_ids(model, tokenizer, question)
    assert ids == chat_prompt_ids(model, tokenizer, monkeypatch, pixels(1), "Hi", GREEDY)
    assert prompt.num_patches_list == [1]

    ids, _ = served_ids(model, tokenizer, [{"role": "user", "content": [
        {"type": "text", "text": "Compare."}, image(1), image(2)]}])
    assert ids == chat_prompt_ids(model, tokenizer, monkeypatch, pixels(1, 2),
                                  "Image-1: <image>\nImage-2: <image>\nCompare.", GREEDY, num_patches_list=[1, 1])

    # History: the image stays with the first turn; a system message replaces the default one.
    ids, _ = served_ids(model, tokenizer, [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [image(3), {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": "And its colour?"}])
    model.system_message, default = "Be brief.", model.system_message
    try:
        expected = chat_prompt_ids(model, tokenizer, monkeypatch, pixels(3), "And its colour?", GREEDY,
                                   history=[("<image>\nWhat is it?", "A cat.")])
    finally:
        model.system_message = default
    assert ids == expected


def test_video_frames_and_merged_user_messages(model):
    prompt = build_prompt(model, messages(
        {"role": "user", "content": "First part."},
        {"role": "user", "content": [{"type": "video", "video": [png_url(1, (900, 450)), png_url(2)]},
                                     {"type": "text", "text": "What happens?"}]}), LIMITS)
    assert prompt.num_patches_list == [1, 1]  # one tile per frame, however wide
    assert "user\nFrame1: <img>" in prompt.query and "</img>\nFirst part.\nWhat happens?<|im_end|>" in prompt.query


@pytest.mark.parametrize("items, match", [
    ([{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "x"}], "must start with a user"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message must be a user"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}],
     "system message must come first"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [image(1)]}, {"role": "user", "content": "c"}],
     "only user messages may contain images"),
    ([{"role": "user", "content": ""}], "user message is empty"),
    ([{"role": "user", "content": "<image>\nWhat?"}], "do not write <image>"),
    ([{"role": "user", "content": [image(i) for i in range(17)]}], "17 images"),
])
def test_conversations_chat_cannot_express_are_400(model, items, match):
    with pytest.raises(APIError, match=match) as error:
        build_prompt(model, messages(*items), MediaLimits())
    assert error.value.status == 400


def test_local_files_only_inside_the_allowed_folder(tmp_path):
    allowed, outside = tmp_path / "media", tmp_path / "secret.png"
    allowed.mkdir()
    Image.new("RGB", (20, 20), "red").save(outside)
    Image.new("RGB", (20, 20), "blue").save(allowed / "ok.png")
    os.symlink(outside, allowed / "link.png")
    limits = MediaLimits(allowed_local_media_path=str(allowed))
    assert len(image_tiles(str(allowed / "ok.png"), limits, "p")) == 1
    assert len(image_tiles(f"file://{allowed / 'ok.png'}", limits, "p")) == 1
    for path in (str(outside), str(allowed / "link.png"), str(allowed / ".." / "secret.png"), "ok.png"):
        with pytest.raises(APIError, match="inside the allowed media folder"):
            image_tiles(path, limits, "p")
    with pytest.raises(APIError, match="not allowed on this server"):
        image_tiles(str(allowed / "ok.png"), MediaLimits(), "p")


@pytest.mark.parametrize("url, match", [
    ("data:image/png,rawdata", "must be base64"),
    ("data:image/png;base64,****", "not valid base64"),
    ("data:image/png;base64," + base64.b64encode(b"GIF89a broken").decode(), "cannot be decoded"),
    ("https://example.com/cat.png", "remote image URLs are not fetched"),
])
def test_unusable_image_urls_are_400(url, match):
    with pytest.raises(APIError, match=match):
        image_tiles(url, MediaLimits(), "p")


def test_image_caps_are_checked_before_decoding():
    with pytest.raises(APIError, match="larger than the 100 bytes"):
        image_tiles(png_url(0, (64, 64)), MediaLimits(max_image_bytes=100), "p")
    with pytest.raises(APIError, match="40x30 pixels, more than the 1000"):
        image_tiles(png_url(0), MediaLimits(max_image_pixels=1000), "p")


@pytest.mark.parametrize("decoded, stops, final, settled", [
    ("  Hello wor", (), "Hello wor", "Hello wor"),
    ("Hello world \n", (), "Hello world", "Hello world"),
    ("Hello \ufffd", (), "Hello \ufffd", "Hello"),             # half a character: wait for the rest
    ("The answer is 4", ("is 42",), "The answer is 4", "The answer"),  # may become the stop sequence
    ("The answer is 42, yes", ("is 42",), "The answer", "The answer"),
    ("One. END more", ("END", "."), "One", "One"),            # the earliest stop sequence wins
    ("Done<|im_end|>junk", (), "Done", "Done"),
])
def test_stream_pieces_add_up_to_the_answer(decoded, stops, final, settled):
    assert final_text(decoded, "<|im_end|>", stops)[0] == final
    assert settled_text(decoded, "<|im_end|>", stops) == settled
    assert final.startswith(settled)


def test_streamed_prefixes_never_change(tokenizer):
    """Token by token, each settled text extends the previous one and ends as the final text."""
    ids = tokenizer("Hi there, 你好世界! 🐼 emoji and a STOP word after.")["input_ids"]
    sent = ""
    for end in range(1, len(ids) + 1):
        settled = settled_text(tokenizer.decode(ids[:end]), "<|im_end|>", ("STOP",))
        assert settled.startswith(sent)
        sent = settled
    assert sent == final_text(tokenizer.decode(ids), "<|im_end|>", ("STOP",))[0] == "Hi there, 你好世界! 🐼 emoji and a"


def test_batching_groups():
    greedy, sampled = Sampling(max_tokens=5), Sampling(temperature=0.7, top_p=0.9)
    assert greedy.group(1) == Sampling(max_tokens=50, stop=("x",)).group(2)  # greedy rows are cut per row
    assert sampled.group(1) == Sampling(temperature=0.7, top_p=0.9, max_tokens=3).group(2)
    assert sampled.group(1) != Sampling(temperature=0.8, top_p=0.9).group(2)
    assert Sampling(temperature=0.7, seed=1).group(1) != Sampling(temperature=0.7, seed=1).group(2)  # seeded: alone
