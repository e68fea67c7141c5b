"""Tensor parallelism (tensor_parallel.py) on two CPU processes over gloo against the single-process model.

Tiny checkpoints with the real structure of InternVL2-Llama3-76B (Llama-3 LLM, its vocabulary split
over the ranks, InternViT-6B-style ViT), InternVL2-26B (InternLM2 with its grouped wqkv; its odd
vocabulary stays whole on every rank) and InternVL2-4B (Phi-3, which stores q/k/v and gate/up
fused). tensor_parallel_worker.py runs one forward and backward with
an image, an SGD step and the export, and writes what each rank holds.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from paddlemix.models.internvl2.checkpoint import open_checkpoint
from reference import REPO_ROOT, load_tool

WORKER = REPO_ROOT / "tests" / "tensor_parallel_worker.py"
CONFIGS = REPO_ROOT / "tests" / "data" / "configs"
TOL = 1e-5
make_tiny = load_tool("make_tiny_checkpoint").make_tiny_checkpoint


def _run(args, tmp_path, ranks):
    cmd = [sys.executable, str(WORKER), *args]
    if ranks > 1:
        cmd[1:1] = ["-m", "paddle.distributed.launch", "--log_dir", str(tmp_path / "logs"), "--nproc_per_node",
                    str(ranks)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    logs = "".join((tmp_path / "logs" / f"workerlog.{r}").read_text(errors="replace")[-3000:]
                   for r in range(ranks) if (tmp_path / "logs" / f"workerlog.{r}").exists())
    assert done.returncode == 0, logs + done.stdout[-2000:] + done.stderr[-3000:]


@pytest.fixture(scope="module", params=["internvl2-llama3-76b", "internvl2-26b", "internvl2-4b"])
def tiny(request, tmp_path_factory):
    """(checkpoint dir, config, inputs.npz) with one structure."""
    root = tmp_path_factory.mktemp(request.param)
    empty_tokenizer = root / "no-tokenizer"
    empty_tokenizer.mkdir()
    config = make_tiny(str(CONFIGS / f"{request.param}.json"), str(empty_tokenizer), str(root / "ckpt"),
                       vocab_to_cover=1, shard_bytes=2**20)
    rng = np.random.default_rng(0)
    llm = config["llm_config"]
    image_tokens = int((config["force_image_size"] // config["vision_config"]["patch_size"]) ** 2
                       * config["downsample_ratio"] ** 2)
    context = llm["vocab_size"] - 1
    ids = rng.integers(0, llm["vocab_size"] - 1, (2, image_tokens + 20))
    ids[:, 3:3 + image_tokens] = context
    labels = ids.copy()
    labels[:, :3 + image_tokens] = -100
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # a left-padded row
    size = config["force_image_size"]
    np.savez(root / "inputs.npz", input_ids=ids, labels=labels, attention_mask=mask, img_context_token_id=context,
             pixel_values=rng.standard_normal((2, 3, size, size)).astype(np.float32))
    return root / "ckpt", config, root / "inputs.npz"


@pytest.fixture(scope="module", params=["full", "lora"])
def runs(request, tiny, tmp_path_factory):
    """(checkpoint dir, config, mode, single-process record, [rank records], {ranks: output folder})."""
    ckpt, config, inputs = tiny
    root = tmp_path_factory.mktemp(request.param)
    records, folders = {}, {}
    for ranks in (1, 2):
        out = folders[ranks] = root / f"ranks{ranks}"
        out.mkdir()
        _run([str(ckpt), str(inputs), str(out), request.param], out, ranks)
        records[ranks] = [dict(np.load(out / f"rank{r}.npz")) for r in range(ranks)]
    return ckpt, config, request.param, records[1][0], records[2], folders


def _close(got, want, what):
    delta = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max()
    scale = max(np.abs(want).max(), 1e-6)
    assert delta / scale <= TOL, f"{what}: max |delta| {delta:.2e} (scale {scale:.2e})"


def test_each_rank_gets_the_same_logits_and_loss_as_one_process(runs):
    _, _, _, whole, ranks, _ = runs
    for rank in ranks:
        _close(rank["logits"], whole["logits"], "logits")
        _close(rank["loss"], whole["loss"], "loss")


def test_the_gathered_parameters_gradients_and_step_equal_one_process(runs):
    _, _, mode, whole, ranks, _ = runs
    names = [key[len("param/"):] for key in whole if key.startswith("param/")]
    assert names and {key for key in ranks[0] if key.startswith("param/")} == {f"param/{n}" for n in names}
    for rank in ranks:
        for name in names:
            np.testing.assert_array_equal(rank["param/" + name], whole["param/" + name], err_msg=name)
            _close(rank["grad/" + name], whole["grad/" + name], f"gradient of {name}")
            _close(rank["stepped/" + name], whole["stepped/" + name], f"{name} after the step")
        for key in (k for k in whole if k.startswith("grad/mlp1.")):
            _close(rank[key], whole[key], key)


def test_each_rank_holds_exactly_its_half_of_the_checkpoint_tensors(runs):
    ckpt, config, _, whole, ranks, _ = runs
    llm = config["llm_config"]
    family = llm["architectures"][0]
    split_vocab = llm["vocab_size"] % 2 == 0
    names = {"LlamaForCausalLM": ("self_attn.q_proj", "mlp.down_proj", "lm_head", "embed_tokens"),
             "Phi3ForCausalLM": ("self_attn.qkv_proj", "mlp.down_proj", "lm_head", "embed_tokens"),
             "InternLM2ForCausalLM": ("attention.wqkv", "feed_forward.w2", "output", "tok_embeddings")}[family]
    with open_checkpoint(str(ckpt)) as checkpoint:
        qkv_stored, down, head, embed = (
            checkpoint.get(f"language_model.model.layers.0.{names[0]}.weight"),
            checkpoint.get(f"language_model.model.layers.0.{names[1]}.weight"),
            checkpoint.get(f"language_model.{names[2]}.weight"),
            checkpoint.get(f"language_model.model.{names[3]}.weight"))
    heads, kv, dim = llm["num_attention_heads"], llm["num_key_value_heads"], llm["hidden_size"] // llm[
        "num_attention_heads"]
    for r, rank in enumerate(ranks):
        qkv = rank["local/layers.0.self_attn.qkv_proj.weight"].T  # [out, in] as stored
        assert qkv.shape[0] == (heads + 2 * kv) * dim // 2
        half_q, half_kv = heads * dim // 2, kv * dim // 2
        if family == "LlamaForCausalLM":  # q_proj stored alone
            np.testing.assert_array_equal(qkv[:half_q], qkv_stored[r * half_q:(r + 1) * half_q])
        elif family == "Phi3ForCausalLM":  # [Q | K | V] stored fused: this rank's half of each
            for offset, size, local in ((0, 2 * half_q, 0), (2 * half_q, 2 * half_kv, half_q),
                                        (2 * half_q + 2 * half_kv, 2 * half_kv, half_q + half_kv)):
                part = qkv_stored[offset:offset + size]
                np.testing.assert_array_equal(qkv[local:local + size // 2], part[r * size // 2:(r + 1) * size // 2])
        else:  # whole KV groups: this rank's rows of wqkv, in [Q | K | V] order
            group_rows = qkv_stored.shape[0] // 2
            mine = qkv_stored[r * group_rows:(r + 1) * group_rows]
            assert sorted(map(tuple, qkv)) == sorted(map(tuple, mine))
        inner = down.shape[1] // 2
        np.testing.assert_array_equal(rank["local/layers.0.mlp.down_proj.weight"].T, down[:, r * inner:(r + 1) * inner])
        vocab = embed.shape[0] // 2 if split_vocab else embed.shape[0]
        start = r * vocab if split_vocab else 0
        np.testing.assert_array_equal(rank["local/embed_tokens.weight"], embed[start:start + vocab])
        np.testing.assert_array_equal(rank["local/lm_head.weight"].T, head[start:start + vocab])
        np.testing.assert_array_equal(rank["local/norm.weight"], whole["local/norm.weight"])


def _tensors(folder):
    with open_checkpoint(str(folder)) as checkpoint:
        return {key: checkpoint.get(key) for key in checkpoint.keys()}


def test_the_export_is_one_whole_checkpoint_like_one_process_writes(runs):
    ckpt, _, mode, _, _, folders = runs
    if mode == "full":  # as loaded: the gathered tensors are the checkpoint's, bit for bit
        single, parallel, loaded = (_tensors(folders[1] / "start"), _tensors(folders[2] / "start"),
                                    _tensors(ckpt))
        assert single.keys() == parallel.keys() == loaded.keys()
        for key in loaded:
            np.testing.assert_array_equal(parallel[key], loaded[key], err_msg=key)
            np.testing.assert_array_equal(single[key], loaded[key], err_msg=key)
    single, parallel = _tensors(folders[1] / "export"), _tensors(folders[2] / "export")
    assert single.keys() == parallel.keys() and not any("lora" in key for key in single)  # merged
    changed = 0
    for key in single:
        _close(parallel[key], single[key], f"exported {key}")
        changed += not np.array_equal(single[key], _tensors(ckpt)[key]) if key.startswith("language_model.") else 0
    assert changed  # the step reached the export


def test_a_rank_does_not_mistake_its_vocabulary_rows_for_a_short_vocabulary(tiny):
    """The vocabulary is split over the ranks: the embeddings' rows are a share, not a size to grow."""
    import paddle

    from paddlemix.models.internvl2 import InternVLChatModel, train_model
    from paddlemix.models.internvl2.config import InternVLChatConfig
    from paddlemix.models.internvl2.tensor_parallel import TensorParallel, apply_tensor_parallel

    ckpt, config, _ = tiny
    vocab = config["llm_config"]["vocab_size"]
    with paddle.LazyGuard():
        model = InternVLChatModel(InternVLChatConfig.from_pretrained(str(ckpt)))
        apply_tensor_parallel(model.language_model, TensorParallel(2, 1, group=object()))
    assert train_model.resize_token_embeddings(model, vocab) == 0
    with pytest.raises(ValueError, match=f"the tokenizer needs {vocab + 1} embedding rows and the checkpoint has "
                                         f"{vocab}; growing them is not supported with tensor parallelism"):
        train_model.resize_token_embeddings(model, vocab + 1)
