"""from_pretrained / save_pretrained on original HF-layout checkpoints, and their error messages."""
import json
import os

import numpy as np
import paddle
import pytest

from paddlemix.models.internvl2 import InternVLChatModel
from paddlemix.models.internvl2.checkpoint import (CheckpointError, as_float32, open_checkpoint, original_layout,
                                                   save_checkpoint)
from paddlemix.models.internvl2.config import ConfigError
from reference import load_tool, require_asset

make_tiny = load_tool("make_tiny_checkpoint").make_tiny_checkpoint
FAMILY_ASSETS = {"qwen2-1b": "internvl2-1b", "internlm2-2b": "internvl2-2b"}


@pytest.fixture(scope="module", params=sorted(FAMILY_ASSETS))
def tiny(request, tmp_path_factory):
    folder = require_asset("tokenizers", FAMILY_ASSETS[request.param])
    out = tmp_path_factory.mktemp(request.param)
    make_tiny(str(folder / "config.json"), str(folder), str(out), shard_bytes=2_000_000)
    return str(out)


def _outputs(model, seed=0):
    """Image features and text logits: together they touch every parameter."""
    ids = paddle.to_tensor(np.random.RandomState(seed).randint(0, 90000, size=(1, 12)))
    pixels = paddle.to_tensor(np.random.RandomState(seed).standard_normal((1, 3, 448, 448)).astype(np.float32))
    lm = model.language_model
    with paddle.no_grad():
        return model.extract_feature(pixels).numpy(), lm(lm.embed_tokens(ids)).numpy()


def test_sharded_checkpoint_round_trips_exactly(tiny, tmp_path):
    assert os.path.isfile(os.path.join(tiny, "model.safetensors.index.json"))
    model = InternVLChatModel.from_pretrained(tiny)
    saved = tmp_path / "saved"
    model.save_pretrained(str(saved), dtype="float32", max_shard_bytes=3_000_000)
    # Every tensor comes back under its original name, layout and value (fused/split and transposes invert).
    with open_checkpoint(tiny) as original, open_checkpoint(str(saved)) as copy:
        assert original.keys() == copy.keys()
        for key in original.keys():
            np.testing.assert_array_equal(original.get(key), copy.get(key), err_msg=key)
    with open(os.path.join(tiny, "config.json"), encoding="utf-8") as f:
        assert json.load(f) == json.loads((saved / "config.json").read_text())
    reloaded = InternVLChatModel.from_pretrained(str(saved))
    for ours, theirs in zip(_outputs(model), _outputs(reloaded)):
        np.testing.assert_array_equal(ours, theirs)


def test_bfloat16_save_reloads_close(tiny, tmp_path):
    model = InternVLChatModel.from_pretrained(tiny)
    model.save_pretrained(str(tmp_path), dtype="bfloat16")
    reloaded = InternVLChatModel.from_pretrained(str(tmp_path), cpu_bf16_weights=False)  # float32 parameters
    for (name, a), (_, b) in zip(model.named_parameters(), reloaded.named_parameters()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2 ** -8, atol=1e-6, err_msg=name)


def test_tensors_stored_back_to_back_are_mapped_not_read(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a.gate": rng.standard_normal((3, 5)), "a.up": rng.standard_normal((4, 5)),
               "b.other": rng.standard_normal(7), "c.last": rng.standard_normal((2, 5))}
    save_checkpoint(str(tmp_path), [(k, v.astype(np.float32)) for k, v in tensors.items()], dtype="bfloat16")
    checkpoint = open_checkpoint(str(tmp_path))
    view, kind = checkpoint.get_mapped(["a.gate", "a.up"])
    stacked, _ = checkpoint.get_stored_stacked(["a.gate", "a.up"])
    assert kind == "BF16" and view.shape == (7, 5)
    np.testing.assert_array_equal(view, stacked)
    assert checkpoint.get_mapped(["a.gate", "c.last"]) is None  # not neighbours in the file: read them
    before = (tmp_path / "model.safetensors").read_bytes()
    view[:] = 0  # copy-on-write: the file never changes
    checkpoint.close()
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert not view.any()  # and the view outlives close()
    np.testing.assert_array_equal(checkpoint.get_mapped(["a.up"])[0], stacked[3:])


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_slice_reads_the_rows_or_columns_of_one_tensor_in_either_layout(tmp_path, dtype):
    """Tensor-parallel ranks read their slice only; PaddleMIX stores Linear weights [in, out]."""
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((6, 10)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    names = ("language_model.model.layers.0.mlp.down_proj.weight", "language_model.model.layers.0.mlp.down_proj.bias")
    save_checkpoint(str(tmp_path / "hf"), [(names[0], weight), (names[1], bias)], dtype=dtype)
    paddle_names = [name.replace(".model.", ".qwen2.") for name in names]
    save_checkpoint(str(tmp_path / "mix"), [(paddle_names[0], weight.T.copy()), (paddle_names[1], bias)], dtype=dtype)
    for folder in ("hf", "mix"):
        with open_checkpoint(str(tmp_path / folder)) as stored:
            checkpoint = original_layout(stored)
            whole = checkpoint.get(names[0])
            assert whole.shape == (6, 10)
            for axis, start, stop in ((0, 2, 5), (1, 3, 10), (1, 0, 0)):
                array, kind = checkpoint.get_slice(names[0], axis, start, stop)
                assert kind == {"bfloat16": "BF16", "float32": "F32"}[dtype]
                np.testing.assert_array_equal(as_float32(array, kind),
                                              whole[start:stop] if axis == 0 else whole[:, start:stop])
            np.testing.assert_array_equal(as_float32(*checkpoint.get_slice(names[1], 0, 1, 4)),
                                          checkpoint.get(names[1])[1:4])
            with pytest.raises(CheckpointError, match="has no slice 4:7"):
                checkpoint.get_slice(names[0], 0, 4, 7)


def _rewrite(src, dst, drop=(), add=None):
    with open_checkpoint(src) as ckpt:
        tensors = {key: ckpt.get(key) for key in ckpt.keys() if key not in drop}
    tensors.update(add or {})
    save_checkpoint(str(dst), tensors)
    for name in ("config.json",):
        (dst / name).write_bytes(open(os.path.join(src, name), "rb").read())
    return str(dst)


def test_missing_key_is_named(tiny, tmp_path):
    key = "vision_model.encoder.layers.1.ls2"
    broken = _rewrite(tiny, tmp_path, drop=[key])
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): vision_model\.encoder\.layers\.1\.ls2"):
        InternVLChatModel.from_pretrained(broken)


def test_unexpected_key_is_named(tiny, tmp_path):
    broken = _rewrite(tiny, tmp_path, add={"vision_model.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\): vision_model\.extra\.weight"):
        InternVLChatModel.from_pretrained(broken)


def test_truncated_shard_is_named(tiny, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(tiny):
        (broken / name).write_bytes(open(os.path.join(tiny, name), "rb").read())
    shard = sorted(p for p in os.listdir(broken) if p.endswith(".safetensors"))[-1]
    data = (broken / shard).read_bytes()
    (broken / shard).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{shard}.*(truncated|corrupt)"):
        InternVLChatModel.from_pretrained(str(broken))


def test_wrong_shape_is_explained(tiny, tmp_path):
    with open_checkpoint(tiny) as ckpt:
        bad = {"mlp1.3.bias": np.zeros(ckpt.shape("mlp1.3.bias")[0] + 1, np.float32)}
    broken = _rewrite(tiny, tmp_path, drop=["mlp1.3.bias"], add=bad)
    with pytest.raises(CheckpointError, match="mlp1.3.bias.*shape"):
        InternVLChatModel.from_pretrained(broken)


def test_unknown_llm_architecture_is_named(tmp_path):
    config = json.loads(require_asset("tokenizers", "internvl2-1b", "config.json").read_text())
    config["llm_config"]["architectures"] = ["MistralForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="MistralForCausalLM"):
        InternVLChatModel.from_pretrained(str(tmp_path))


def test_directory_without_config_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        InternVLChatModel.from_pretrained(str(tmp_path))


def test_bad_dtype_for_cpu_is_explained(tiny):
    with pytest.raises(ValueError, match="no CPU kernels"):
        InternVLChatModel.from_pretrained(tiny, dtype="bfloat16")
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        InternVLChatModel.from_pretrained(tiny, dtype="float8")


def test_hub_id_without_network_says_how_to_pass_a_local_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(OSError, match=r"could not download 'OpenGVLab/InternVL2-1B'.*local directory"):
        InternVLChatModel.from_pretrained("OpenGVLab/InternVL2-1B")


def test_real_size_checkpoint_builds_the_reference_parameter_count(tmp_path):
    """The full InternVL2-1B shape, random bf16 weights in the HF layout: loads, and counts like transformers."""
    from reference import run_reference

    folder = require_asset("tokenizers", "internvl2-1b")
    config = json.loads((folder / "config.json").read_text())
    vision, llm = config["vision_config"], config["llm_config"]
    real_sizes = dict(
        vision_hidden=vision["hidden_size"], vision_heads=vision["num_attention_heads"],
        vision_intermediate=vision["intermediate_size"], vision_layers=vision["num_hidden_layers"],
        llm_hidden=llm["hidden_size"], llm_heads=llm["num_attention_heads"],
        llm_kv_heads=llm["num_key_value_heads"], llm_intermediate=llm["intermediate_size"],
        llm_layers=llm["num_hidden_layers"])
    written = make_tiny(str(folder / "config.json"), str(folder), str(tmp_path), dtype="bfloat16",
                        shard_bytes=1 << 30, **real_sizes)
    assert written["vision_config"] == vision and written["llm_config"] == llm
    model = InternVLChatModel.from_pretrained(str(tmp_path))
    reference = run_reference("count", str(tmp_path), {})

    def count(prefix):
        return sum(int(np.prod(p.shape)) for name, p in model.named_parameters() if name.startswith(prefix))

    assert count("vision_model.") == reference["vision"]
    assert count("mlp1.") == reference["projector"]
    assert count("language_model.lm_head.") == reference["lm_head"]
    assert count("language_model.") - count("language_model.lm_head.") == reference["llm"]
    assert count("") == reference["total"]
