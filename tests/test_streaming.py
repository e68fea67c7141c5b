"""Streaming: the model card's threaded TextIteratorStreamer loop, TextStreamer, and transformers' chunking."""
import json
import subprocess
from threading import Thread

import numpy as np
import pytest

from paddlemix.models.internvl2 import GenerationError, TextIteratorStreamer, TextStreamer
from conftest import random_pixels as pixels
from reference import require_reference_python

STREAM_TEXT = ("Hello world, this is  a test.\nSecond line: 你好，世界！ emoji 🐼🎋 end<|im_end|> tail \n\n"
               " done")


def stream_like_the_model_card(model, tokenizer, pixel_values, question, max_new_tokens):
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
    generation_config = dict(max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)
    thread = Thread(target=model.chat, kwargs=dict(tokenizer=tokenizer, pixel_values=pixel_values, question=question,
                                                   history=None, return_history=False,
                                                   generation_config=generation_config))
    thread.start()
    pieces = []
    for new_text in streamer:
        if new_text == model.conv_template.sep:
            break
        pieces.append(new_text)
    thread.join()
    return pieces


@pytest.mark.parametrize("tiles, question", [(2, "<image>\nPlease describe the image in detail."),
                                             (0, "Hello, who are you?")])
def test_streamed_text_equals_the_chat_answer(model, tokenizer, tiles, question):
    pixel_values = pixels(tiles, 1) if tiles else None
    pieces = stream_like_the_model_card(model, tokenizer, pixel_values, question, max_new_tokens=24)
    answer = model.chat(tokenizer, pixel_values, question, dict(max_new_tokens=24, do_sample=False))
    assert len(pieces) > 1
    # chat() strips the answer; the stream keeps the text exactly as decoded.
    assert "".join(pieces).strip() == answer


def test_text_streamer_prints_the_answer(model, tokenizer, capsys):
    config = dict(max_new_tokens=16, do_sample=False)
    answer = model.chat(tokenizer, pixels(1, 2), "Describe.", config)
    capsys.readouterr()
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    model.chat(tokenizer, pixels(1, 2), "Describe.", dict(config, streamer=streamer))
    printed = capsys.readouterr().out
    assert printed.endswith("\n") and printed.strip() == answer


def test_streaming_needs_one_answer(model, tokenizer):
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    with pytest.raises(GenerationError, match="cannot follow beam search"):
        model.chat(tokenizer, None, "Hi", dict(max_new_tokens=2, num_beams=2, streamer=streamer))
    with pytest.raises(GenerationError, match="follows one answer, but 2 prompts"):
        model.batch_chat(tokenizer, None, ["Hi", "Hello"], dict(max_new_tokens=2, streamer=streamer))


HF_STREAMER = """
import json, sys, torch
from transformers import AutoTokenizer, TextIteratorStreamer
request = json.load(sys.stdin)
tokenizer = AutoTokenizer.from_pretrained(request["path"], trust_remote_code=False)
streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=request["skip_special_tokens"])
streamer.put(torch.zeros([1, 0], dtype=torch.long))
for token in request["ids"]:
    streamer.put(torch.tensor([token]))
streamer.end()
json.dump(list(streamer), sys.stdout)
"""


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_pieces_match_transformers_text_iterator_streamer(tokenizer, tiny_1b, skip_special_tokens):
    """Same words released at the same steps: spaces, newlines, CJK, emoji split over tokens, special tokens."""
    ids = tokenizer(STREAM_TEXT)["input_ids"]
    request = {"path": tiny_1b, "ids": ids, "skip_special_tokens": skip_special_tokens}
    run = subprocess.run([require_reference_python(), "-c", HF_STREAMER], input=json.dumps(request),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=skip_special_tokens)
    streamer.put(np.zeros([1, 0], dtype=np.int64))
    for token in ids:
        streamer.put(np.array([token]))
    streamer.end()
    assert list(streamer) == json.loads(run.stdout)
