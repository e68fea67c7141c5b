"""Generation against transformers' `generate` on the same tiny_1b Qwen2 weights.

The reference is called as InternVL calls it, from `inputs_embeds`, with
transformers' GenerationConfig defaults for everything not set (length_penalty
1.0, early_stopping False), so greedy, beam search and the repetition penalty
are compared exactly as users of the official model get them.
"""
import json
import shutil

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file, save_file

from paddlemix.models.internvl2 import GenerationError, InternVLChatModel, load_tokenizer
from reference import run_reference

MAX_NEW = 12


@pytest.fixture(scope="module")
def echo(tiny_1b, tmp_path_factory):
    """The tiny_1b checkpoint with lm_head = 20 x embeddings: it keeps repeating a token, so penalties matter."""
    out = tmp_path_factory.mktemp("tiny_1b-echo")
    shutil.copytree(tiny_1b, out, dirs_exist_ok=True)
    weights = load_file(str(out / "model.safetensors"))
    weights["language_model.lm_head.weight"] = weights["language_model.model.embed_tokens.weight"] * np.float32(20)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return str(out)


def prompts(padded=True):
    """Two prompts, the second left-padded by five positions unless `padded` is False."""
    ids = np.random.RandomState(0).randint(0, 151000, size=(2, 23)).astype(np.int64)
    mask = np.ones_like(ids)
    if padded:
        mask[1, :5] = 0
    return ids, mask


def ours(model, settings, padded=True):
    ids, mask = prompts(padded)
    return model.generate(input_ids=ids, attention_mask=mask, **dict({"eos_token_id": None}, **settings)).numpy()


def compare_with_transformers(model, ckpt, settings, padded=True):
    ids, mask = prompts(padded)
    reference = run_reference("llm", ckpt, {"input_ids": ids, "attention_mask": mask, "from_embeds": True,
                                            "generate_settings": json.dumps(settings)})
    for index, setting in enumerate(settings):
        np.testing.assert_array_equal(ours(model, setting, padded), reference[f"generated_{index}"],
                                      err_msg=str(setting))


def test_greedy_and_beam_search_equal_transformers(model, tiny_1b):
    # End tokens that the beams really produce, so hypotheses finish early and eos lists are exercised.
    probe = ours(model, dict(max_new_tokens=MAX_NEW, num_beams=3))
    eos = [int(probe[0, 4]), int(probe[1, 7])]
    settings = [
        dict(max_new_tokens=MAX_NEW),
        dict(max_new_tokens=MAX_NEW, eos_token_id=eos),
        dict(max_new_tokens=MAX_NEW, num_beams=3),
        dict(max_new_tokens=MAX_NEW, num_beams=3, eos_token_id=eos),
        dict(max_new_tokens=MAX_NEW, num_beams=3, eos_token_id=eos[0]),
        dict(max_new_tokens=MAX_NEW, num_beams=3, eos_token_id=eos, length_penalty=0.3, early_stopping=True),
        dict(max_new_tokens=MAX_NEW, num_beams=4, eos_token_id=eos, length_penalty=2.0, early_stopping="never"),
    ]
    finished_early = ours(model, settings[3])
    assert finished_early.shape[1] < MAX_NEW and eos[0] in finished_early[0]
    compare_with_transformers(model, tiny_1b, settings)


def test_repetition_penalty_equals_transformers(echo):
    """Without padding: transformers 5 skips the first `padding length` ids of each row from the penalty, which
    from embeddings are generated tokens; InternVL's transformers (4.37) penalises every generated token, as here."""
    model = InternVLChatModel.from_pretrained(echo)
    plain = ours(model, dict(max_new_tokens=MAX_NEW), padded=False)
    penalised = ours(model, dict(max_new_tokens=MAX_NEW, repetition_penalty=3.0), padded=False)
    assert all(len(set(row)) == 1 for row in plain.tolist())  # the echo model repeats itself...
    assert all(len(set(row)) > 1 for row in penalised.tolist())  # ...until the penalty pushes it elsewhere
    compare_with_transformers(model, echo, padded=False, settings=[
        dict(max_new_tokens=MAX_NEW, repetition_penalty=3.0),
        dict(max_new_tokens=MAX_NEW, repetition_penalty=0.7),
        dict(max_new_tokens=MAX_NEW, num_beams=3, repetition_penalty=3.0),
    ])


def test_generate_stops_at_the_llm_eos_by_default(model, monkeypatch):
    ids, _ = prompts()
    free = model.generate(input_ids=ids[:1], max_new_tokens=8, eos_token_id=None).numpy()
    monkeypatch.setattr(model.config.llm, "eos_token_id", int(free[0, 3]))
    np.testing.assert_array_equal(model.generate(input_ids=ids[:1], max_new_tokens=8).numpy(), free[:, :4])


@pytest.mark.parametrize("num_beams", [1, 3])
def test_sampling_with_a_seed_is_reproducible(model, num_beams):
    config = dict(max_new_tokens=8, do_sample=True, temperature=1.5, top_k=0, num_beams=num_beams)
    first, again = ours(model, dict(config, seed=11)), ours(model, dict(config, seed=11))
    other = ours(model, dict(config, seed=12))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_batch_chat_with_beam_search_equals_chat(model, tiny_1b):
    tokenizer = load_tokenizer(tiny_1b)
    rng = np.random.RandomState(3)
    images = [paddle.to_tensor(rng.standard_normal((tiles, 3, 448, 448)).astype(np.float32)) for tiles in (1, 2)]
    questions = ["Describe it.", "What colour is the thing on the left of the picture?"]
    config = dict(max_new_tokens=6, num_beams=2)
    batched = model.batch_chat(tokenizer, paddle.concat(images), questions, config, num_patches_list=[1, 2])
    assert batched == [model.chat(tokenizer, image, q, config) for image, q in zip(images, questions)]


def test_text_only_batch_chat_equals_chat(model, tiny_1b):
    tokenizer = load_tokenizer(tiny_1b)
    questions = ["Hello, who are you?", "Tell me a story about a red panda in the snow."]
    config = dict(max_new_tokens=6, do_sample=False)
    assert model.batch_chat(tokenizer, None, questions, config) == [
        model.chat(tokenizer, None, q, config) for q in questions]


@pytest.mark.parametrize("settings, match", [
    (dict(num_beams=0), "num_beams must be a positive integer"),
    (dict(num_beams=2.5), "num_beams must be a positive integer"),
    (dict(num_beams=2, early_stopping="sometimes"), "early_stopping must be True, False or 'never'"),
])
def test_bad_beam_settings_are_explained(model, settings, match):
    with pytest.raises(GenerationError, match=match):
        ours(model, dict(max_new_tokens=2, **settings))


def test_no_new_tokens(model):
    assert ours(model, dict(max_new_tokens=0, num_beams=3)).shape == (2, 0)
