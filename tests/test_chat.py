"""chat / batch_chat / generate behaviour on a tiny InternVL2-1B-shaped checkpoint with the real tokenizer."""
import numpy as np
import paddle
import pytest

from paddlemix.models.internvl2 import PromptError
from paddlemix.models.internvl2.generation import GenerationError
from conftest import random_pixels as pixels
from test_tokenizer import hf_reference

GREEDY = dict(max_new_tokens=6, do_sample=False)
SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"


class PromptRecorder:
    """Stands in for model.generate to capture the token ids chat() builds."""

    def __init__(self, model):
        self.model, self.prompts = model, []

    def __call__(self, pixel_values=None, input_ids=None, attention_mask=None, **kwargs):
        self.prompts.append(np.asarray(input_ids).tolist())
        self.eos = kwargs["eos_token_id"]
        return paddle.to_tensor([[self.eos]] * len(self.prompts[-1]))


def image_tokens(tiles):
    return "<img>" + "<IMG_CONTEXT>" * 256 * tiles + "</img>"


def test_chat_builds_the_official_hermes2_prompts(model, tokenizer, tiny_1b, monkeypatch):
    recorder = PromptRecorder(model)
    monkeypatch.setattr(model, "generate", recorder)
    one = pixels(3, 0)
    model.chat(tokenizer, one, "Please describe the image shortly.", GREEDY)
    two = paddle.concat([pixels(2, 1), pixels(1, 2)])
    model.chat(tokenizer, two, "Image-1: <image>\nImage-2: <image>\nWhat are the differences?", GREEDY,
               num_patches_list=[2, 1])
    history = [("<image>\nWhat animal is this?", "It is a red panda.")]
    model.chat(tokenizer, pixels(1, 3), "Where does it live?", GREEDY, history=history)
    expected = [
        f"<|im_start|>system\n{SYSTEM}<|im_end|><|im_start|>user\n{image_tokens(3)}\nPlease describe the image "
        "shortly.<|im_end|><|im_start|>assistant\n",
        f"<|im_start|>system\n{SYSTEM}<|im_end|><|im_start|>user\nImage-1: {image_tokens(2)}\nImage-2: "
        f"{image_tokens(1)}\nWhat are the differences?<|im_end|><|im_start|>assistant\n",
        f"<|im_start|>system\n{SYSTEM}<|im_end|><|im_start|>user\n{image_tokens(1)}\nWhat animal is this?"
        "<|im_end|><|im_start|>assistant\nIt is a red panda.<|im_end|><|im_start|>user\nWhere does it live?"
        "<|im_end|><|im_start|>assistant\n",
    ]
    reference = hf_reference("auto", tiny_1b, texts=expected, tokens=["<|im_end|>"])
    assert [p[0] for p in recorder.prompts] == reference["ids"]
    assert recorder.eos == reference["token_ids"][0]


def test_multi_turn_history_and_pure_text(model, tokenizer):
    response, history = model.chat(tokenizer, pixels(1, 4), "What is it?", GREEDY, return_history=True)
    assert history == [("<image>\nWhat is it?", response)]
    response2, history = model.chat(tokenizer, pixels(1, 4), "And then?", GREEDY, history=history,
                                    return_history=True)
    assert history[1] == ("And then?", response2)
    text_only = model.chat(tokenizer, None, "Hello, who are you?", GREEDY)
    assert isinstance(text_only, str)


def test_batch_chat_equals_one_by_one_chat(model, tokenizer):
    images = [pixels(1, 10), pixels(3, 11), pixels(2, 12)]
    questions = ["Describe it.", "What colour is the thing on the left of the picture?", "<image>\nCount them."]
    config = dict(max_new_tokens=8, do_sample=False)
    batched = model.batch_chat(tokenizer, paddle.concat(images), questions, config,
                               num_patches_list=[int(i.shape[0]) for i in images])
    single = [model.chat(tokenizer, image, question, config) for image, question in zip(images, questions)]
    assert batched == single


def test_batch_chat_rejects_history(model, tokenizer):
    with pytest.raises(NotImplementedError, match="multi-turn"):
        model.batch_chat(tokenizer, pixels(1, 0), ["Hi"], GREEDY, num_patches_list=[1], history=[])


@pytest.mark.parametrize("question, tiles, match", [
    ("<image>\n<image>\nCompare.", [1], "2 <image> tags but 1 images"),
    ("Image-1: <image>\nWhat?", [1, 1], "1 <image> tags but 2 images"),
])
def test_image_tag_count_must_match_the_images(model, tokenizer, question, tiles, match):
    with pytest.raises(PromptError, match=match):
        model.chat(tokenizer, pixels(sum(tiles), 0), question, GREEDY, num_patches_list=tiles)


def test_image_tag_without_images_is_an_error(model, tokenizer):
    with pytest.raises(PromptError, match="1 <image> tags but 0 images"):
        model.chat(tokenizer, None, "<image>\nWhat is this?", GREEDY)


def test_context_token_count_must_match_the_features(model, tokenizer):
    ids = tokenizer("<img>" + "<IMG_CONTEXT>" * 255 + "</img> hi", return_tensors="np")["input_ids"]
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    with pytest.raises(PromptError, match="255 <IMG_CONTEXT> tokens but the images give 256"):
        model.generate(pixel_values=pixels(1, 0), input_ids=ids, max_new_tokens=2)


def test_prompt_over_the_context_is_an_error(model, tokenizer):
    with pytest.raises(PromptError, match="more than the model's context of 32768"):
        model.chat(tokenizer, pixels(1, 0), "Describe.", dict(max_new_tokens=40000))


@pytest.mark.parametrize("settings, match", [
    (dict(do_sample=True, temperature=0.0), "temperature must be > 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(max_new_tokens=-1), "max_new_tokens must be a non-negative integer"),
    (dict(max_new_tokens=4, colour="red"), "unknown generation settings"),
])
def test_bad_generation_settings_are_explained(model, tokenizer, settings, match):
    with pytest.raises(GenerationError, match=match):
        model.chat(tokenizer, None, "Hi", dict(dict(max_new_tokens=4), **settings))


def test_sampling_with_a_seed_is_reproducible(model, tokenizer):
    config = dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.95, top_k=100, seed=1234)
    first = model.chat(tokenizer, pixels(1, 5), "Say something.", config)
    second = model.chat(tokenizer, pixels(1, 5), "Say something.", config)
    assert first == second
