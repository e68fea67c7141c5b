"""Prompt strings of the InternVL conversation templates.

The expected strings are written out by hand from OpenGVLab/InternVL
internvl_chat/internvl/conversation.py (MPT style: system + sep, then
role + message + sep per turn, and the bare role for the open turn).
"""
import pytest

from paddlemix.models.internvl2.conversation import TEMPLATE_NAMES, SeparatorStyle, get_conv_template

INTERNVL2_SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
INTERNVL2_5_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
QUESTION = "<image>\nWhat is in the image?"

ONE_IMAGE_PROMPTS = {
    "Hermes-2": (
        "<|im_start|>system\n" + INTERNVL2_SYSTEM + "<|im_end|>"
        "<|im_start|>user\n<image>\nWhat is in the image?<|im_end|>"
        "<|im_start|>assistant\n"
    ),
    "internlm2-chat": (
        "<|im_start|>system\n" + INTERNVL2_SYSTEM + "<|im_end|>"
        "<|im_start|>user\n<image>\nWhat is in the image?<|im_end|>"
        "<|im_start|>assistant\n"
    ),
    "phi3-chat": (
        "<|system|>\n" + INTERNVL2_SYSTEM + "<|end|>"
        "<|user|>\n<image>\nWhat is in the image?<|end|>"
        "<|assistant|>\n"
    ),
    "internvl2_5": (
        "<|im_start|>system\n" + INTERNVL2_5_SYSTEM + "<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is in the image?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
}


def chat(name, turns, system_message=None):
    """The prompt for (question, answer) turns, the last answer None, as official chat() builds it."""
    conv = get_conv_template(name)
    if system_message is not None:
        conv.system_message = system_message
    for question, answer in turns:
        conv.append_message(conv.roles[0], question)
        conv.append_message(conv.roles[1], answer)
    return conv.get_prompt()


def test_the_internvl2_templates_are_registered():
    assert set(TEMPLATE_NAMES) == {"Hermes-2", "internlm2-chat", "phi3-chat", "internvl2_5"}


@pytest.mark.parametrize("name", sorted(ONE_IMAGE_PROMPTS))
def test_one_image_single_turn_prompt(name):
    assert chat(name, [(QUESTION, None)]) == ONE_IMAGE_PROMPTS[name]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Hermes-2", "<|im_start|>system\nBe brief.<|im_end|>"),
        ("internlm2-chat", "<|im_start|>system\nBe brief.<|im_end|>"),
        ("phi3-chat", "<|system|>\nBe brief.<|end|>"),
        ("internvl2_5", "<|im_start|>system\nBe brief.<|im_end|>\n"),
    ],
)
def test_system_only_prompt(name, expected):
    assert chat(name, [], system_message="Be brief.") == expected


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "Hermes-2",
            "<|im_start|>system\nBe brief.<|im_end|>"
            "<|im_start|>user\nHi<|im_end|><|im_start|>assistant\nHello!<|im_end|>"
            "<|im_start|>user\nAnd now?<|im_end|><|im_start|>assistant\n",
        ),
        (
            "internlm2-chat",
            "<|im_start|>system\nBe brief.<|im_end|>"
            "<|im_start|>user\nHi<|im_end|><|im_start|>assistant\nHello!<|im_end|>"
            "<|im_start|>user\nAnd now?<|im_end|><|im_start|>assistant\n",
        ),
        (
            "phi3-chat",
            "<|system|>\nBe brief.<|end|>"
            "<|user|>\nHi<|end|><|assistant|>\nHello!<|end|>"
            "<|user|>\nAnd now?<|end|><|assistant|>\n",
        ),
        (
            "internvl2_5",
            "<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
            "<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n",
        ),
    ],
)
def test_two_turn_prompt(name, expected):
    assert chat(name, [("Hi", "Hello!"), ("And now?", None)], system_message="Be brief.") == expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Hermes-2", "<|im_start|>system\nS<|im_end|><|im_start|>user\nQ<|im_end|><|im_start|>assistant\nA<|im_end|>"),
        ("phi3-chat", "<|system|>\nS<|end|><|user|>\nQ<|end|><|assistant|>\nA<|end|>"),
    ],
)
def test_closed_assistant_turn_ends_with_the_separator(name, expected):
    assert chat(name, [("Q", "A")], system_message="S") == expected


def test_empty_message_leaves_the_turn_open_like_none():
    assert chat("Hermes-2", [("Q", "")]) == chat("Hermes-2", [("Q", None)])


def test_empty_system_message_still_renders_the_system_block():
    assert chat("Hermes-2", [], system_message="") == "<|im_start|>system\n<|im_end|>"


@pytest.mark.parametrize(
    "name, roles, sep, stop_token, stop_str",
    [
        ("Hermes-2", ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>", "<|im_end|>", "<|endoftext|>"),
        ("internlm2-chat", ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>", "<|im_end|>", None),
        ("phi3-chat", ("<|user|>\n", "<|assistant|>\n"), "<|end|>", "<|end|>", None),
        ("internvl2_5", ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>\n", "<|im_end|>", None),
    ],
)
def test_template_fields(name, roles, sep, stop_token, stop_str):
    conv = get_conv_template(name)
    assert conv.name == name
    assert conv.roles == roles
    assert conv.sep == sep
    assert conv.stop_token == stop_token
    assert conv.stop_str == stop_str
    assert conv.sep_style is SeparatorStyle.MPT
    assert conv.messages == []


def test_default_system_messages():
    assert get_conv_template("Hermes-2").system_message == INTERNVL2_SYSTEM
    assert get_conv_template("internlm2-chat").system_message == INTERNVL2_SYSTEM
    assert get_conv_template("phi3-chat").system_message == INTERNVL2_SYSTEM
    assert get_conv_template("internvl2_5").system_message == INTERNVL2_5_SYSTEM


def test_templates_are_independent_copies():
    first = get_conv_template("Hermes-2")
    first.append_message(first.roles[0], "Q")
    first.system_message = "changed"
    second = get_conv_template("Hermes-2")
    assert second.messages == []
    assert second.system_message == INTERNVL2_SYSTEM

    copied = first.copy()
    copied.append_message(copied.roles[1], "A")
    assert first.messages == [["<|im_start|>user\n", "Q"]]
    assert copied.messages == [["<|im_start|>user\n", "Q"], ["<|im_start|>assistant\n", "A"]]


def test_unknown_template_names_it_and_lists_the_known_ones():
    with pytest.raises(ValueError) as error:
        get_conv_template("vicuna_v1.1")
    message = str(error.value)
    assert "'vicuna_v1.1'" in message
    for name in TEMPLATE_NAMES:
        assert name in message
