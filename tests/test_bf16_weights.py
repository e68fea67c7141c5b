"""CPU inference that keeps a bf16 checkpoint's language model weights in bf16 (quant.Bf16Linear).

Widening bf16 is exact, so the model must give the float32 model's numbers up to summation order:
logits within 1e-5 relative and the same greedy tokens, on every entry point. The parity against
transformers of every LLM family with these weights is in test_families (its checkpoints are bf16).
"""
import os

import numpy as np
import paddle
import pytest

from conftest import random_pixels
from paddlemix.models.internvl2 import InternVLChatModel, load_tokenizer, quant
from paddlemix.models.internvl2.checkpoint import open_checkpoint
from paddlemix.models.internvl2.llm import KVCache
from reference import load_tool, require_asset

GREEDY = dict(max_new_tokens=6, do_sample=False)


@pytest.fixture(scope="module")
def tiny_bf16(tmp_path_factory):
    folder = require_asset("tokenizers", "internvl2-1b")
    out = tmp_path_factory.mktemp("tiny-bf16")
    load_tool("make_tiny_checkpoint").make_tiny_checkpoint(str(folder / "config.json"), str(folder), str(out), seed=11,
                                                           dtype="bfloat16", shard_bytes=3_000_000)
    return str(out)


@pytest.fixture(scope="module")
def models(tiny_bf16):
    return (InternVLChatModel.from_pretrained(tiny_bf16),
            InternVLChatModel.from_pretrained(tiny_bf16, cpu_bf16_weights=False))


def _relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _linears(model):
    """{name: layer} of the Linear layers of the language model and the ViT (float32 or kept bf16)."""
    kinds = (paddle.nn.Linear, quant.Bf16Linear)
    return {name: layer for name, layer in model.named_sublayers()
            if name.startswith(("language_model.", "vision_model.")) and isinstance(layer, kinds)}


def test_the_linear_layers_keep_the_files_bf16_tensors(tiny_bf16, models):
    kept, widened = models
    kept_linears, wide_linears = _linears(kept), _linears(widened)
    assert set(kept_linears) == set(wide_linears) and "language_model.lm_head" in kept_linears
    assert any(name.startswith("vision_model.") for name in kept_linears)
    assert all(isinstance(layer, quant.Bf16Linear) for layer in kept_linears.values())
    lm = kept.language_model
    assert isinstance(lm.embed_tokens, quant.Bf16Embedding) and lm.embed_tokens.weight.dtype == paddle.bfloat16
    assert all(p.dtype == paddle.float32 for p in kept.mlp1.parameters())  # norms and the projector stay float32
    assert lm.embed_tokens(paddle.to_tensor([[3, 4]])).dtype == paddle.float32
    with open_checkpoint(tiny_bf16) as checkpoint:
        stored, kind = checkpoint.get_stored("language_model.model.layers.0.mlp.down_proj.weight")
    weight = lm.layers[0].mlp.down_proj.weight
    assert kind == "BF16" and weight.dtype == paddle.bfloat16 and weight.shape == list(stored.shape)  # [out, in]
    np.testing.assert_array_equal(weight.view(paddle.int16).numpy().view(np.uint16), stored)
    bf16_bytes = sum(layer.weight.numel().item() * 2 for layer in kept_linears.values())
    assert 2 * bf16_bytes == sum(layer.weight.numel().item() * 4 for layer in wide_linears.values())  # half


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_weights_stored_back_to_back_are_used_from_the_files_memory_map(tiny_bf16, models):
    """Loading does not read them: gate/up (neighbours in the file) and down are views of the mapped shard."""
    mapped = []
    with open("/proc/self/maps", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[-1].startswith(tiny_bf16):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                mapped.append((start, end))
    mlp = models[0].language_model.layers[0].mlp
    for weight in (mlp.gate_up_proj.weight, mlp.down_proj.weight):
        assert any(start <= weight.data_ptr() < end for start, end in mapped)
    widened = models[1].language_model.layers[0].mlp.down_proj.weight
    assert not any(start <= widened.data_ptr() < end for start, end in mapped)


def test_the_vit_gives_the_float32_features(models):
    pixels = random_pixels(2, 1)
    with paddle.no_grad():
        got, want = (model.extract_feature(pixels).numpy() for model in models)
    assert _relative(got, want) <= 1e-5


def test_logits_and_greedy_tokens_are_the_float32_models(models):
    kept, widened = models
    ids = paddle.to_tensor(np.random.RandomState(0).randint(0, 151000, (2, 21)))
    padded = paddle.to_tensor([[0, 0, 0] + [1] * 18, [1] * 21], dtype="int64")
    with paddle.no_grad():
        for model_ids, mask in ((ids[:1, :1], None), (ids[:, :7], None), (ids, padded)):  # 1, 14 and 42 rows
            got = kept.language_model(kept.language_model.embed_tokens(model_ids), mask).numpy()
            want = widened.language_model(widened.language_model.embed_tokens(model_ids), mask).numpy()
            assert _relative(got, want) <= 1e-5
    # decoding one token at a time over the cache, past the first cache block
    lm = kept.language_model
    with paddle.no_grad():
        embeds = lm.embed_tokens(ids)
        full = widened.language_model(widened.language_model.embed_tokens(ids)).numpy()
        cache = KVCache(lm.config, 2, 21, "float32")
        steps = [lm(embeds[:, :4], paddle.ones([2, 4], "int64"), cache=cache).numpy()]
        for t in range(4, 21):
            steps.append(lm(embeds[:, t:t + 1], paddle.ones([2, t + 1], "int64"), cache=cache).numpy())
    assert _relative(np.concatenate(steps, axis=1), full) <= 1e-5
    tokens = [model.generate(input_ids=ids.numpy(), attention_mask=padded.numpy(), max_new_tokens=8,
                             do_sample=False, eos_token_id=None).numpy() for model in models]
    np.testing.assert_array_equal(*tokens)


def test_chat_and_batch_chat_answer_as_the_float32_model(tiny_bf16, models):
    tokenizer = load_tokenizer(tiny_bf16)
    pixels = random_pixels(1, 2)
    answers = [(model.chat(tokenizer, pixels, "<image>\nWhat is this?", GREEDY),
                model.batch_chat(tokenizer, paddle.concat([random_pixels(1, 2), random_pixels(2, 3)]),
                                 ["<image>\nDescribe it.", "What colour is it?"], GREEDY, num_patches_list=[1, 2]))
               for model in models]
    assert answers[0] == answers[1]


def test_int8_from_the_bf16_weights_is_the_int8_of_the_float32_weights(tiny_bf16):
    kept = InternVLChatModel.from_pretrained(tiny_bf16, quant="weight_only_int8")
    widened = InternVLChatModel.from_pretrained(tiny_bf16, quant="weight_only_int8", cpu_bf16_weights=False)
    a, b = kept.language_model.layers[1].self_attn.qkv_proj, widened.language_model.layers[1].self_attn.qkv_proj
    assert isinstance(a, quant.WeightOnlyInt8Linear) and isinstance(kept.language_model.lm_head, quant.Bf16Linear)
    np.testing.assert_array_equal(a.weight_int8.numpy(), b.weight_int8.numpy())
    np.testing.assert_array_equal(a.weight_scale.numpy(), b.weight_scale.numpy())
    ids = paddle.to_tensor([[5, 6, 7]])
    with paddle.no_grad():
        got, want = (m.language_model(m.language_model.embed_tokens(ids)).numpy() for m in (kept, widened))
    assert _relative(got, want) <= 1e-5


def test_save_pretrained_writes_the_loaded_tensors_back_bit_for_bit(tiny_bf16, models, tmp_path):
    models[0].save_pretrained(str(tmp_path), dtype="bfloat16")
    with open_checkpoint(tiny_bf16) as source, open_checkpoint(str(tmp_path)) as saved:
        assert set(source.keys()) == set(saved.keys())
        for key in source.keys():
            np.testing.assert_array_equal(source.get_stored(key)[0], saved.get_stored(key)[0], err_msg=key)


def test_training_needs_float32_weights_and_the_choice_is_explained(tiny_bf16, tiny_1b, models):
    kept = models[0]
    kept.train()
    try:
        with pytest.raises(RuntimeError, match=r"cpu_bf16_weights=False\) to train"):
            kept.language_model(kept.language_model.embed_tokens(paddle.to_tensor([[1, 2]])))
    finally:
        kept.eval()
    with pytest.raises(ValueError, match="cpu_bf16_weights=True cannot be met: the checkpoint holds no bf16 "
                                         "Linear weights"):
        InternVLChatModel.from_pretrained(tiny_1b, cpu_bf16_weights=True)
    fp32 = InternVLChatModel.from_pretrained(tiny_1b)  # a float32 checkpoint keeps float32 parameters
    assert isinstance(fp32.language_model.lm_head, paddle.nn.Linear)
    assert os.path.exists(os.path.join(tiny_bf16, "model.safetensors.index.json"))  # the sharded layout loaded
