"""internvl_chat_finetune.py on two ranks through `python -m paddle.distributed.launch`, on CPU.

The only multi-process run possible here: fp32 data parallel with sharding stage1 over two CPU
processes (gloo). It checks the launch path, the per-rank data split, the rank-0 export, and the
one-sentence error for the setting paddleformers cannot run (fp32 clipping on several ranks).
"""
import json
import os
import re
import subprocess
import sys

from paddlemix.models.internvl2 import InternVLChatModel
from reference import REPO_ROOT
from test_finetune_e2e import meta, tiny  # noqa: F401  (module fixtures)

SCRIPT = REPO_ROOT / "paddlemix" / "examples" / "internvl2" / "internvl_chat_finetune.py"


def launch(tiny, meta, tmp_path, *extra):
    args = ["--model_name_or_path", tiny, "--meta_path", meta, "--output_dir", str(tmp_path / "out"),
            "--max_dynamic_patch", "1", "--video_frames", "2", "--max_seq_length", "1024",
            "--per_device_train_batch_size", "1", "--logging_steps", "1", "--seed", "7", "--save_steps", "1000",
            "--max_steps", "3", "--learning_rate", "2e-3", "--freeze_backbone", "True", "--device", "cpu",
            "--sharding", "stage1", *extra]
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir", str(tmp_path / "logs"),
           "--nproc_per_node", "2", str(SCRIPT), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=REPO_ROOT)


def worker_log(tmp_path, rank):
    return (tmp_path / "logs" / f"workerlog.{rank}").read_text(errors="replace")


def test_two_ranks_train_and_rank_zero_exports(tiny, meta, tmp_path):  # noqa: F811
    proc = launch(tiny, meta, tmp_path, "--max_grad_norm", "0")
    assert proc.returncode == 0, worker_log(tmp_path, 0)[-3000:]
    for rank in (0, 1):
        log = worker_log(tmp_path, rank)
        assert "world_size                    : 2" in log
        assert "sharding_degree: 2" in log
    losses = [float(value) for value in re.findall(r" - loss: ([0-9.]+),", worker_log(tmp_path, 0))]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    results = json.loads((tmp_path / "out" / "train_results.json").read_text())
    assert abs(results["train_loss"] - sum(losses) / 3) < 1e-4
    model = InternVLChatModel.from_pretrained(str(tmp_path / "out"))
    assert model.config.llm.num_hidden_layers == InternVLChatModel.from_pretrained(tiny).config.llm.num_hidden_layers


def test_fp32_clipping_on_two_ranks_is_one_clear_error(tiny, meta, tmp_path):  # noqa: F811
    proc = launch(tiny, meta, tmp_path)
    assert proc.returncode != 0
    log = worker_log(tmp_path, 0)
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert errors == ["error: on several ranks, gradient clipping needs --amp_master_grad True (bf16); "
                      "fp32 runs must pass --max_grad_norm 0"], log[-3000:]
    assert "Traceback" not in log
