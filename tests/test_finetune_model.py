"""Model side of fine-tuning on a tiny InternVL2-1B-shaped checkpoint: loss, freezing, LoRA, recompute, vocabulary."""
import json

import numpy as np
import paddle
import pytest
from paddle.base import core

from paddlemix.models.internvl2 import InternVLChatModel, load_tokenizer
from paddlemix.models.internvl2 import train_model as tm
from paddlemix.models.internvl2.modeling import causal_lm_loss
from paddlemix.models.internvl2.train_data import Collator, DataConfig, SupervisedDataset
from reference import load_tool, require_asset
from test_finetune_data import write_synthetic_dataset

IMAGE_SIZE = 224  # 64 image tokens per tile keeps these steps fast


def _tiny_checkpoint(out, config_dir, **sizes):
    config = json.loads((config_dir / "config.json").read_text())
    config["vision_config"]["image_size"] = config["force_image_size"] = IMAGE_SIZE
    (out / "config.json").write_text(json.dumps(config))
    load_tool("make_tiny_checkpoint").make_tiny_checkpoint(str(out / "config.json"), str(config_dir), str(out),
                                                           seed=3, **sizes)
    return str(out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny_checkpoint(tmp_path_factory.mktemp("tiny1b"), require_asset("tokenizers", "internvl2-1b"))


@pytest.fixture(scope="module")
def batch(tiny, tmp_path_factory):
    tokenizer = load_tokenizer(tiny)
    meta = write_synthetic_dataset(tmp_path_factory.mktemp("data"))
    config = DataConfig(template="Hermes-2", num_image_token=64, image_size=IMAGE_SIZE, max_dynamic_patch=2,
                        video_frames=2)
    dataset = SupervisedDataset(meta, tokenizer, config)
    # An image sample and the text-only one (its blank tile is dropped by image_flags).
    return {k: paddle.to_tensor(v) for k, v in Collator(tokenizer.pad_token_id)([dataset[0], dataset[5]]).items()}


def _model(tiny):
    model = InternVLChatModel.from_pretrained(tiny)
    model.img_context_token_id = 151648
    return model


def _step(model, batch, seed=0):
    """Loss and gradients of one training forward/backward."""
    model.train()
    model.clear_gradients(set_to_zero=False)
    paddle.seed(seed)
    loss = model(**batch)["loss"]
    loss.backward()
    return float(loss), {name: p.grad.numpy().copy() for name, p in model.named_parameters() if p.grad is not None}


def _train(model, batch, steps=2):
    optimizer = paddle.optimizer.AdamW(1e-3, parameters=[p for p in model.parameters() if not p.stop_gradient],
                                       weight_decay=0.1)
    for step in range(steps):
        _step(model, batch, seed=step)
        optimizer.step()


def _weights(model):
    return {name: p.numpy().copy() for name, p in model.named_parameters()}


# --- loss ----------------------------------------------------------------------------------
def test_loss_is_the_mean_over_unmasked_next_tokens():
    rng = np.random.RandomState(0)
    logits = rng.standard_normal((3, 6, 11)).astype(np.float32)
    labels = rng.randint(0, 11, size=(3, 6))
    labels[0, :4] = -100
    labels[1, :] = -100  # a fully masked row must not dilute the mean
    labels[2, [0, 2, 5]] = -100
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = [-log_probs[b, t, labels[b, t + 1]] for b in range(3) for t in range(5) if labels[b, t + 1] != -100]
    loss = causal_lm_loss(paddle.to_tensor(logits), paddle.to_tensor(labels))
    assert float(loss) == pytest.approx(np.mean(picked), rel=1e-6)
    nothing = paddle.to_tensor(logits)
    nothing.stop_gradient = False
    zero = causal_lm_loss(nothing, paddle.full([3, 6], -100, dtype="int64"))
    zero.backward()
    assert float(zero) == 0.0 and not nothing.grad.numpy().any()


def test_model_loss_is_the_masked_mean_of_its_logits(tiny, batch):
    model = _model(tiny)
    model.eval()
    out = model(**batch)
    labels = batch["labels"].numpy()
    rows, cols = np.nonzero(labels[:, 1:] != -100)  # position t is scored on token t + 1
    logits = out["logits"].numpy()[rows, cols].astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    expected = -log_probs[np.arange(len(rows)), labels[rows, cols + 1]].mean()
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)


# --- freezing ---------------------------------------------------------------------------------
FREEZE_CASES = [
    (dict(freeze_backbone=True), ("mlp1.", "language_model.")),
    (dict(freeze_llm=True, freeze_backbone=True, unfreeze_lm_head=True), ("mlp1.", "language_model.lm_head.")),
    (dict(freeze_backbone=True, freeze_mlp=True, freeze_llm=True, unfreeze_vit_layers=-1),
     ("vision_model.encoder.layers.1.",)),
    (dict(freeze_backbone=True, freeze_mlp=True, freeze_llm=True, unfreeze_vit_layers=1),
     ("vision_model.encoder.layers.1.",)),
    (dict(freeze_llm=True, freeze_mlp=True), ("vision_model.",)),
    (dict(freeze_llm=True, use_backbone_lora=0, use_llm_lora=0), ("vision_model.", "mlp1.")),
]


@pytest.mark.parametrize("flags, expected_prefixes", FREEZE_CASES)
def test_freeze_flags_name_exactly_the_trainable_parameters(tiny, flags, expected_prefixes):
    model = _model(tiny)
    trainable = set(tm.set_trainable(model, **flags))
    assert trainable == {name for name, _ in model.named_parameters() if name.startswith(expected_prefixes)}
    assert trainable == {name for name, p in model.named_parameters() if not p.stop_gradient}


@pytest.mark.parametrize("flags", [case[0] for case in FREEZE_CASES[1:3]])
def test_training_moves_only_the_trainable_parameters(tiny, batch, flags):
    model = _model(tiny)
    trainable = set(tm.set_trainable(model, **flags))
    before = _weights(model)
    _train(model, batch)
    for name, value in _weights(model).items():
        if name in trainable:
            assert not np.array_equal(value, before[name]), f"{name} should have moved"
        else:
            assert np.array_equal(value, before[name]), f"{name} should be bitwise unchanged"


def test_fully_frozen_parts_run_in_eval_mode(tiny, batch):
    model = _model(tiny)
    tm.set_drop_path_rate(model, 0.5)
    tm.set_trainable(model, freeze_backbone=True)
    assert tm.keep_frozen_in_eval(model) == ["vision_model"]
    model.train()
    first, second = (model(**batch)["loss"] for _ in range(2))
    assert not model.vision_model.training and model.language_model.training
    assert float(first) == float(second)  # drop path is off in the frozen ViT


def test_drop_path_rates_rise_linearly_over_depth(tiny):
    model = _model(tiny)
    tm.set_drop_path_rate(model, 0.4)
    assert [layer.drop_path1.rate for layer in model.vision_model.encoder.layers] == [0.0, 0.4]
    assert model.config.to_dict()["vision_config"]["drop_path_rate"] == 0.4


# --- LoRA ----------------------------------------------------------------------------------------
def test_lora_trains_only_adapters_and_merges_to_the_same_outputs(tiny, batch):
    model = _model(tiny)
    assert tm.add_lora(model, tm.LLM_LORA_TARGETS, 4) == 8  # 2 layers x qkv, o, gate_up, down
    assert tm.add_lora(model, tm.VIT_LORA_TARGETS, 4) == 8  # 2 layers x qkv, proj, fc1, fc2
    trainable = tm.set_trainable(model, freeze_llm=True, freeze_backbone=True, freeze_mlp=True, use_llm_lora=4,
                                 use_backbone_lora=4)
    assert trainable and all(".lora_" in name for name in trainable)
    tm.set_gradient_checkpointing(model)
    before = _weights(model)
    _train(model, batch, steps=3)
    after = _weights(model)
    for name in after:
        assert np.array_equal(after[name], before[name]) != (".lora_" in name), name
    model.eval()
    adapted = model(**batch)["logits"].numpy()
    assert tm.merge_lora(model) == 16
    assert not any(".lora_" in name for name, _ in model.named_parameters())
    merged = model(**batch)["logits"].numpy()
    np.testing.assert_allclose(merged, adapted, rtol=0, atol=2e-5)
    original = _model(tiny)
    original.eval()
    assert not np.allclose(merged, original(**batch)["logits"].numpy(), atol=1e-3)


# --- recompute ------------------------------------------------------------------------------------
def _count_calls(layers):
    calls = []
    for layer in layers:
        layer.register_forward_post_hook(lambda layer, inputs, output: calls.append(layer))
    return calls


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(tiny, batch):
    model = _model(tiny)
    tm.set_drop_path_rate(model, 0.3)  # the recomputed forward must draw the same drop-path masks
    calls = _count_calls([model.vision_model.encoder.layers[0], model.language_model.layers[0]])
    plain_loss, plain_grads = _step(model, batch)
    assert len(calls) == 2  # each layer ran once
    tm.set_gradient_checkpointing(model)
    calls.clear()
    loss, grads = _step(model, batch)
    assert len(calls) == 4  # and again in backward: recompute is really on
    assert loss == plain_loss
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        np.testing.assert_array_equal(grads[name], plain_grads[name], err_msg=name)


def test_gradient_checkpointing_frees_activations(tmp_path, batch):
    wider = _tiny_checkpoint(tmp_path, require_asset("tokenizers", "internvl2-1b"), vision_hidden=128,
                             vision_intermediate=512, vision_layers=4, llm_hidden=128, llm_intermediate=384,
                             llm_layers=4)
    kept = {}
    for enabled in (False, True):
        model = _model(wider)
        tm.set_gradient_checkpointing(model, enabled)
        model.train()
        start = core.host_memory_stat_current_value("Allocated", 0)
        loss = model(**batch)["loss"]
        kept[enabled] = core.host_memory_stat_current_value("Allocated", 0) - start
        del loss
    assert kept[True] < 0.3 * kept[False], kept


# --- vocabulary -----------------------------------------------------------------------------------
def test_new_token_rows_start_at_the_mean(tiny):
    model = _model(tiny)
    rows = model.config.llm.vocab_size
    old_embeddings = model.language_model.embed_tokens.weight.numpy()
    old_head = model.language_model.lm_head.weight.numpy()
    assert tm.resize_token_embeddings(model, rows) == 0
    assert tm.resize_token_embeddings(model, rows + 3) == 3
    embeddings = model.language_model.embed_tokens.weight.numpy()
    head = model.language_model.lm_head.weight.numpy()
    np.testing.assert_array_equal(embeddings[:rows], old_embeddings)
    np.testing.assert_allclose(embeddings[rows:], np.tile(old_embeddings.mean(0), (3, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head[:, rows:], np.tile(old_head.mean(1, keepdims=True), (1, 3)), rtol=1e-5,
                               atol=1e-6)
    assert model.config.to_dict()["llm_config"]["vocab_size"] == rows + 3
    assert model(paddle.zeros([1, 3, IMAGE_SIZE, IMAGE_SIZE]), paddle.to_tensor([[rows + 2, 5]]),
                 image_flags=paddle.to_tensor([0]))["logits"].shape[-1] == rows + 3


def test_tokenizer_vocab_size_covers_the_image_tokens(tiny):
    assert tm.tokenizer_vocab_size(load_tokenizer(tiny)) == 151655


# --- export -------------------------------------------------------------------------------------------
def test_export_writes_a_loadable_checkpoint_with_the_tokenizer_files(tiny, tmp_path):
    model = _model(tiny)
    tm.add_lora(model, tm.LLM_LORA_TARGETS, 2)
    tm.export_checkpoint(model, tiny, str(tmp_path), dtype="float32")
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json",
            "generation_config.json"} <= {path.name for path in tmp_path.iterdir()}
    assert load_tokenizer(str(tmp_path)).convert_tokens_to_ids("<IMG_CONTEXT>") == 151648
    InternVLChatModel.from_pretrained(str(tmp_path))


def test_an_interrupted_export_leaves_nothing_that_loads(tiny, tmp_path, monkeypatch):
    def disk_full(*args):
        raise OSError("disk full")

    # The weights and config.json are written to the staging folder; copying the tokenizer fails.
    monkeypatch.setattr(tm.shutil, "copyfile", disk_full)
    with pytest.raises(OSError, match="disk full"):
        tm.export_checkpoint(_model(tiny), tiny, str(tmp_path), dtype="float32")
    assert not any(path.name.endswith((".json", ".safetensors")) for path in tmp_path.iterdir())
    with pytest.raises(ValueError, match="config.json"):
        InternVLChatModel.from_pretrained(str(tmp_path))
