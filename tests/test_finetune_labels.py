"""Label masking for fine-tuning, per chat template, with the real tokenizers.

Exactly the assistant answers and the end-of-turn token after each are trained; the
ids are those chat() would feed the model for the same conversation.
"""
import json

import numpy as np
import pytest

from paddlemix.models.internvl2 import load_tokenizer
from paddlemix.models.internvl2.conversation import get_conv_template
from paddlemix.models.internvl2.train_labels import (IGNORE_INDEX, LabelBuilder, TokenizationMismatch,
                                                     fill_image_tags, image_placeholder, render)
from reference import require_asset

TURNS = [("human", "<image>\nWhat animal is this?"), ("gpt", "It is a red panda."),
         ("human", "Where does it live?"), ("gpt", "  In the forests\nof the Himalayas. ")]
END_TOKENS = {"Hermes-2": "<|im_end|>", "internlm2-chat": "<|im_end|>", "internvl2_5": "<|im_end|>",
              "phi3-chat": "<|end|>"}
IMAGE_TOKENS = 7


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    found = {name: load_tokenizer(require_asset("tokenizers", name)) for name in ("internvl2-1b", "internvl2-2b")}
    found["phi3"] = load_tokenizer(_phi3_tokenizer_dir(tmp_path_factory.mktemp("phi3")))
    return found


def _phi3_tokenizer_dir(path):
    """Phi-3's sentencepiece setup (Llama-2 model + chat tokens with rstrip) plus InternVL's image tokens."""
    import shutil

    shutil.copyfile(require_asset("tokenizers", "llama2-spm", "tokenizer.model"), path / "tokenizer.model")
    added = {"0": {"content": "<unk>"}, "1": {"content": "<s>"}, "2": {"content": "</s>", "rstrip": True},
             "32000": {"content": "<|endoftext|>"}}
    for index, token in ((32001, "<|assistant|>"), (32006, "<|system|>"), (32007, "<|end|>"), (32010, "<|user|>")):
        added[str(index)] = {"content": token, "rstrip": True}
    for offset, token in enumerate(("<img>", "</img>", "<IMG_CONTEXT>")):
        added[str(32011 + offset)] = {"content": token}
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "<|endoftext|>",
         "unk_token": "<unk>", "pad_token": "<|endoftext|>", "added_tokens_decoder": added}))
    (path / "config.json").write_text(json.dumps({"llm_config": {"architectures": ["Phi3ForCausalLM"]}}))
    return path


def _with_placeholders(turns):
    return [(speaker, fill_image_tags(value, image_placeholder())) for speaker, value in turns]


def _runs(mask):
    """[start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


@pytest.mark.parametrize("template", list(END_TOKENS))
def test_render_is_the_chat_prompt(template):
    conv = get_conv_template(template)
    for speaker, value in TURNS:
        value = value.strip() if template == "internlm2-chat" else value
        conv.append_message(conv.roles[0] if speaker == "human" else conv.roles[1], value)
    rendered = render(template, TURNS)
    assert rendered.text == conv.get_prompt()
    answers = [rendered.text[start:end] for start, end in rendered.answer_spans]
    expected = [value.strip() if template == "internlm2-chat" else value
                for speaker, value in TURNS if speaker == "gpt"]
    assert answers == [answer + END_TOKENS[template] for answer in expected]


@pytest.mark.parametrize("tokenizer_name, template", [
    ("internvl2-1b", "Hermes-2"), ("internvl2-2b", "internlm2-chat"),
    ("internvl2-1b", "internvl2_5"), ("internvl2-2b", "internvl2_5"), ("phi3", "phi3-chat")])
def test_only_answers_and_their_end_token_are_trained(tokenizers, tokenizer_name, template):
    tokenizer = tokenizers[tokenizer_name]
    rendered = render(template, _with_placeholders(TURNS))
    input_ids, labels = LabelBuilder(tokenizer).build(rendered, [IMAGE_TOKENS])

    # The ids are exactly what chat() tokenizes for this conversation, image tokens included.
    chat_text = rendered.text.replace("<IMG_CONTEXT>", "<IMG_CONTEXT>" * IMAGE_TOKENS)
    assert input_ids.tolist() == list(tokenizer(chat_text)["input_ids"])
    assert (input_ids == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")).sum() == IMAGE_TOKENS

    trained = labels != IGNORE_INDEX
    assert np.array_equal(labels[trained], input_ids[trained])
    runs = _runs(trained)
    answers = [value for speaker, value in TURNS if speaker == "gpt"]
    assert len(runs) == len(answers)
    end_id = tokenizer.convert_tokens_to_ids(END_TOKENS[template])
    for (start, end), answer in zip(runs, answers):
        assert input_ids[end - 1] == end_id  # the end-of-turn token is trained ...
        text = tokenizer.decode(input_ids[start:end - 1].tolist())
        assert text.strip() == answer.strip()  # ... after exactly the answer
    assert int(trained.sum()) == sum(end - start for start, end in runs)


def test_multiple_images_are_widened_in_order(tokenizers):
    tokenizer = tokenizers["internvl2-1b"]
    turns = _with_placeholders([("human", "Image-1: <image>\nImage-2: <image>\nDiffer?"), ("gpt", "Yes.")])
    input_ids, labels = LabelBuilder(tokenizer).build(render("Hermes-2", turns), [3, 5])
    context = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    starts = np.flatnonzero(input_ids == tokenizer.convert_tokens_to_ids("<img>"))
    ends = np.flatnonzero(input_ids == tokenizer.convert_tokens_to_ids("</img>"))
    assert [(end - start - 1) for start, end in zip(starts, ends)] == [3, 5]
    assert (input_ids[starts[0] + 1:ends[0]] == context).all()
    assert (labels[input_ids == context] == IGNORE_INDEX).all()


def test_a_system_turn_replaces_the_system_message(tokenizers):
    rendered = render("internvl2_5", [("human", "Hi"), ("gpt", "Hello.")], system_message="Be brief.")
    assert rendered.text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_a_tokenizer_merging_across_an_answer_boundary_is_refused(tokenizers):
    # Qwen2's BPE has one token for "\n\n": an answer starting with "\n" fuses with the role's "\n".
    rendered = render("Hermes-2", [("human", "Hi"), ("gpt", "\nHello.")])
    with pytest.raises(TokenizationMismatch, match="answer boundary"):
        LabelBuilder(tokenizers["internvl2-1b"]).build(rendered, [])
