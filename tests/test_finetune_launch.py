"""internvl_chat_finetune.py on two ranks through `python -m paddle.distributed.launch`, on CPU.

fp32 over two CPU processes (gloo): sharding stage1, fp32 master gradients with clipping, and
sharding stage3 through Paddle's own code (stage3_on_cpu.py lifts its CPU refusal). It checks the
launch path, the per-rank data split, saving, resuming and the rank-0 export, the shipped shell
scripts with DEVICE=cpu, and the one-sentence errors for what cannot run on CPU ranks.
"""
import json
import os
import re
import shutil
import subprocess
import time
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from paddleformers.trainer.trainer_utils import ShardingOption

from paddlemix.examples.internvl2.internvl_chat_finetune import gather_full_parameters
from paddlemix.models.internvl2 import InternVLChatModel
from paddlemix.models.internvl2.checkpoint import CheckpointError, open_checkpoint
from paddlemix.models.internvl2.train_trainer import COMPLETE_MARKER
from reference import REPO_ROOT
from test_finetune_e2e import meta, tensors, tiny  # noqa: F401  (module fixtures)

SCRIPT = REPO_ROOT / "paddlemix" / "examples" / "internvl2" / "internvl_chat_finetune.py"
STAGE3_ON_CPU = REPO_ROOT / "tests" / "stage3_on_cpu.py"
TENSOR_PARALLEL_ON_CPU = REPO_ROOT / "tests" / "tensor_parallel_on_cpu.py"
SHELL_DIR = REPO_ROOT / "paddlemix" / "examples" / "internvl2" / "shell" / "internvl2.0" / "2nd_finetune"


def _arguments(tiny, meta, tmp_path, *extra):
    return ["--model_name_or_path", tiny, "--meta_path", meta, "--output_dir", str(tmp_path / "out"),
            "--max_dynamic_patch", "1", "--video_frames", "2", "--max_seq_length", "1024",
            "--per_device_train_batch_size", "1", "--logging_steps", "1", "--seed", "7", "--save_steps", "1000",
            "--max_steps", "3", "--learning_rate", "2e-3", "--freeze_backbone", "True", "--device", "cpu", *extra]


def launch(tiny, meta, tmp_path, *extra, script=SCRIPT):
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir", str(tmp_path / "logs"),
           "--nproc_per_node", "2", str(script), *_arguments(tiny, meta, tmp_path, "--sharding", "stage1", *extra)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=REPO_ROOT)


def one_process(tiny, meta, tmp_path, *extra):
    """The same run in one process without the launcher: the reference."""
    cmd = [sys.executable, str(SCRIPT), *_arguments(tiny, meta, tmp_path, *extra)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=REPO_ROOT)


def _losses(text):
    return [float(value) for value in re.findall(r" - loss: ([0-9.]+),", text)]


def worker_log(tmp_path, rank):
    return (tmp_path / "logs" / f"workerlog.{rank}").read_text(errors="replace")


def launch_errors(proc, tmp_path):
    """The `error: ` lines of the rank the launcher names as failed, which it prints to the user.

    Both ranks check the same arguments, but the launcher stops the other rank as soon as one
    fails, so the other one's log may end before its own error line (seen on CI for rank 0).
    Whatever a rank did write must still be that error alone, without a traceback."""
    failed = re.search(r"Container rank (\d+) status failed", proc.stderr)
    assert failed, proc.stderr[-2000:]
    logs = {rank: worker_log(tmp_path, rank) for rank in (0, 1)}
    errors = {rank: [line for line in log.splitlines() if line.startswith("error: ")] for rank, log in logs.items()}
    rank = int(failed.group(1))
    assert errors[rank], logs[rank][-3000:]
    assert all(lines in ([], errors[rank]) for lines in errors.values()), errors
    assert not any("Traceback" in log for log in logs.values()), logs[rank][-3000:]
    assert errors[rank][0] in proc.stdout  # the launcher's tail of the failed rank's log
    return errors[rank]


def failure(proc, tmp_path):
    """What a failed launch left: the ends of both workers' logs and of the launcher's output."""
    logs = [f"--- worker {rank} ---\n" + worker_log(tmp_path, rank)[-2000:] for rank in (0, 1)
            if (tmp_path / "logs" / f"workerlog.{rank}").exists()]
    return "\n".join([*logs, "--- launcher ---", (proc.stdout + proc.stderr)[-1500:]])


def test_two_ranks_train_and_rank_zero_exports(tiny, meta, tmp_path):  # noqa: F811
    proc = launch(tiny, meta, tmp_path, "--max_grad_norm", "0")
    assert proc.returncode == 0, failure(proc, tmp_path)
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


def test_master_gradients_clip_on_two_ranks(tiny, meta, tmp_path):  # noqa: F811
    """The bf16 scripts' optimizer path (paddle's MixPrecisionOptimizer with fp32 master gradients,
    clipping at 1.0 over both ranks). On CPU bf16 autocast is a no-op, so the numbers stay fp32;
    the export is bf16, as the scripts'."""
    proc = launch(tiny, meta, tmp_path, "--bf16", "True", "--fp16_opt_level", "O1", "--amp_master_grad", "True",
                  "--max_grad_norm", "1.0")
    log = worker_log(tmp_path, 0)
    assert proc.returncode == 0, failure(proc, tmp_path)
    norms = [float(value) for value in re.findall(r"global_norm: ([0-9.]+)", log)]
    assert len(norms) == 3 and all(norm > 1.0 for norm in norms)  # so the clip was active
    with open_checkpoint(str(tmp_path / "out")) as checkpoint:
        assert {checkpoint.get_stored(name)[1] for name in checkpoint.keys()} == {"BF16"}


def test_fp32_clipping_on_two_ranks_is_one_clear_error(tiny, meta, tmp_path):  # noqa: F811
    proc = launch(tiny, meta, tmp_path)
    assert proc.returncode != 0
    assert launch_errors(proc, tmp_path) == ["error: on several ranks, gradient clipping needs --amp_master_grad "
                                             "True (bf16); fp32 runs must pass --max_grad_norm 0"]


@pytest.mark.parametrize("args, message", [
    (("--sharding", "stage3"), "sharding stage3 runs on GPUs, XPUs and NPUs only (Paddle refuses it on CPU); "
                               "use --sharding stage1 on CPU"),
    (("--split_param", "True", "--bf16", "True", "--fp16_opt_level", "O1", "--amp_master_grad", "True"),
     "--split_param True runs on GPUs, XPUs and NPUs only (Paddle's fused buffers); pass --split_param False on CPU"),
    (("--split_param", "True"), "invalid arguments: Currently sharding stage1 v2 only support amp_master_grad"),
    (("--tensor_parallel_degree", "2"), "tensor parallelism runs on GPUs, XPUs and NPUs only (fleet's "
                                        "TensorParallel wrapper refuses CPU); leave --tensor_parallel_degree at 1 "
                                        "on CPU"),
])
def test_what_cpu_ranks_cannot_run_is_one_clear_error(tiny, meta, tmp_path, args, message):  # noqa: F811
    proc = launch(tiny, meta, tmp_path, "--max_grad_norm", "0", *args)
    assert proc.returncode != 0
    assert launch_errors(proc, tmp_path) == ["error: " + message]


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_stage3_trains_saves_resumes_and_exports_exactly_as_stage1(tiny, meta, tmp_path, mode):  # noqa: F811
    """Paddle's stage3 code on two CPU processes (stage3_on_cpu.py lifts its CPU refusal): the
    losses and the exported weights equal stage1's bitwise, frozen slices (the ViT; in LoRA the
    base weights, embeddings and head) included; checkpoints save at every step, and a run
    resumed from one ends the same."""
    extra = ("--max_grad_norm", "0") + (("--freeze_llm", "True", "--freeze_mlp", "True", "--use_llm_lora", "8")
                                        if mode == "lora" else ())
    stage1 = launch(tiny, meta, tmp_path / "stage1", *extra)
    stage3 = launch(tiny, meta, tmp_path / "stage3", *extra, "--sharding", "stage3", "--save_steps", "1",
                    script=STAGE3_ON_CPU)  # a save after every step: the second one used to fail under LoRA
    assert stage1.returncode == 0, failure(stage1, tmp_path / "stage1")
    assert stage3.returncode == 0, failure(stage3, tmp_path / "stage3")
    log = worker_log(tmp_path / "stage3", 0)
    sliced = re.search(r"GroupShardedStage3 on CPU: (\d+) parameters sliced over 2 ranks", log)
    frozen = re.search(r"sharding stage3: (\d+) frozen sliced parameters go back to their slices", log)
    assert sliced and frozen and int(sliced.group(1)) > int(frozen.group(1)) > 0  # the ViT at least is frozen
    # Released layer by layer in backward: at the step's end only the few whose input needs no gradient are left.
    whole = re.search(r"sharding stage3: (\d+) of (\d+) frozen sliced parameters were still whole", log)
    assert whole and int(whole.group(1)) <= 2, whole
    resumed = tmp_path / "resumed"
    (resumed / "out").mkdir(parents=True)
    shutil.copytree(tmp_path / "stage3" / "out" / "checkpoint-2", resumed / "out" / "checkpoint-2")
    proc = launch(tiny, meta, resumed, *extra, "--sharding", "stage3", "--save_steps", "2", script=STAGE3_ON_CPU)
    assert proc.returncode == 0, failure(proc, resumed)

    losses = {name: re.findall(r" - loss: ([0-9.]+),", worker_log(tmp_path / name, 0))
              for name in ("stage1", "stage3", "resumed")}
    assert len(losses["stage1"]) == 3 and losses["stage3"] == losses["stage1"]
    assert losses["resumed"] == losses["stage1"][2:]
    exported = {name: tensors(str(tmp_path / name / "out")) for name in ("stage1", "stage3", "resumed")}
    for name in ("stage3", "resumed"):
        assert exported[name].keys() == exported["stage1"].keys()
        for key, value in exported["stage1"].items():
            np.testing.assert_array_equal(exported[name][key], value, err_msg=f"{name}: {key}")
    base = tensors(tiny)
    assert any(not np.array_equal(value, base[key]) for key, value in exported["stage3"].items())  # it trained


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_tensor_parallel_trains_resumes_and_exports_like_one_process(tiny, meta, tmp_path, mode):  # noqa: F811
    """--tensor_parallel_degree 2 on two CPU processes (tensor_parallel_on_cpu.py broadcasts the inputs
    without fleet's GPU assert): each rank trains half of the language model, the losses and the
    export equal one process's (LoRA: the first loss, see below), checkpoints hold one model file per
    rank, and a run resumed from one continues the same losses to the same export."""
    extra = ("--max_grad_norm", "0", "--save_steps", "2") + (
        ("--freeze_llm", "True", "--freeze_mlp", "True", "--use_llm_lora", "8") if mode == "lora" else ())
    single = one_process(tiny, meta, tmp_path / "single", *extra)
    assert single.returncode == 0, (single.stdout + single.stderr)[-3000:]
    parallel = launch(tiny, meta, tmp_path / "tp", *extra, "--tensor_parallel_degree", "2",
                      script=TENSOR_PARALLEL_ON_CPU)
    assert parallel.returncode == 0, failure(parallel, tmp_path / "tp")
    log = worker_log(tmp_path / "tp", 0)
    assert "mp_degree: 2" in log and "tensor-parallel rank 0 of 2 loaded its slice: peak host RSS" in log
    per_device = int(re.search(r"Number of trainable parameters = ([0-9,]+) \(per device\)", log).group(1)
                     .replace(",", ""))
    whole = int(re.search(r"trainable: (\d+) of", single.stdout + single.stderr).group(1))
    assert per_device < whole  # the language model's share is split
    assert {path.name for path in (tmp_path / "tp" / "out" / "checkpoint-2").glob("model_state.tp0*")} == {
        "model_state.tp00.pdparams", "model_state.tp01.pdparams"}
    resumed = tmp_path / "resumed"
    (resumed / "out").mkdir(parents=True)
    shutil.copytree(tmp_path / "tp" / "out" / "checkpoint-2", resumed / "out" / "checkpoint-2")
    proc = launch(tiny, meta, resumed, *extra, "--tensor_parallel_degree", "2", script=TENSOR_PARALLEL_ON_CPU)
    assert proc.returncode == 0, failure(proc, resumed)

    expected, losses = _losses(single.stdout + single.stderr), _losses(log)
    assert len(expected) == len(losses) == 3
    np.testing.assert_array_equal(_losses(worker_log(resumed, 0)), losses[2:])
    exported = {name: tensors(str(tmp_path / name / "out")) for name in ("single", "tp", "resumed")}
    assert exported["tp"].keys() == exported["resumed"].keys() == exported["single"].keys()
    for key, value in exported["tp"].items():
        np.testing.assert_array_equal(exported["resumed"][key], value, err_msg=key)
    if mode == "full":
        np.testing.assert_allclose(losses, expected, rtol=1e-5)
        for key, value in exported["single"].items():
            np.testing.assert_allclose(exported["tp"][key], value, rtol=0, atol=1e-5 * max(np.abs(value).max(), 1),
                                       err_msg=key)
    else:  # the adapters' A starts from other random draws than in one process; B starts at 0
        np.testing.assert_allclose(losses[0], expected[0], rtol=1e-5)
    base = tensors(tiny)
    assert any(not np.array_equal(value, base[key]) for key, value in exported["tp"].items())  # it trained


def test_an_ungathered_parameter_stops_the_export(tiny, tmp_path):  # noqa: F811
    model = InternVLChatModel.from_pretrained(tiny)
    model.language_model.embed_tokens.weight._clear_data()  # what stage3 leaves on a rank before gathering
    with pytest.raises(CheckpointError, match="language_model.embed_tokens.weight holds no data"):
        model.save_pretrained(str(tmp_path / "out"))
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_stage3_export_gathers_the_frozen_slices_too():
    """Pins the call Paddle needs without launching (its default skips frozen parameters, which
    would leave a frozen ViT or LoRA's base weights empty in the export); the stage3 runs above
    cover it end to end."""
    calls = []
    wrapped = SimpleNamespace(get_all_parameters=lambda **kwargs: calls.append(kwargs))
    for sharding, expected in (([ShardingOption.FULL_SHARD], [{"convert2cpu": True, "with_freeze_param": True}]),
                               ([ShardingOption.SHARD_OP], []), ([], [])):
        calls.clear()
        gather_full_parameters(SimpleNamespace(args=SimpleNamespace(sharding=sharding), model_wrapped=wrapped))
        assert calls == expected, sharding


def _processes_mentioning(text, grace=5.0):
    """Pids of live processes whose command line contains `text`, after up to `grace` seconds to exit."""
    deadline = time.monotonic() + grace
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(pid))
            except OSError:  # it exited meanwhile
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_the_shipped_script_runs_on_two_cpu_processes(tiny, meta, tmp_path, mode):  # noqa: F811
    """The 2B script as users start it, with DEVICE=cpu: the official arguments (dynamic tiles up
    to 6, recompute, length grouping, 4 loader workers, cosine schedule, visualdl, stage1) except
    the precision, on two processes with gradient accumulation, a checkpoint and the export."""
    out = tmp_path / "out"
    script = SHELL_DIR / f"internvl2_2b_internlm2_1_8b_dynamic_res_2nd_finetune_{mode}.sh"
    env = dict(os.environ, DEVICE="cpu", GPUS="2", PER_DEVICE_BATCH_SIZE="1", BATCH_SIZE="4", MODEL=tiny,
               META_PATH=meta, OUTPUT_DIR=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(script), "--max_steps", "3", "--save_steps", "2"], capture_output=True,
                          text=True, timeout=900, env=env, cwd=REPO_ROOT)
    log = (out / "launch_logs" / "workerlog.0").read_text(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    assert _processes_mentioning(str(out)) == [], "the run left processes behind (data loader workers?)"
    summary, command = proc.stdout.splitlines()[:2]
    assert summary.endswith("2 cpu(s) x 1 per device x 2 accumulation / 1 tensor-parallel = global batch 4")
    assert "-m paddle.distributed.launch --nproc_per_node 2 " in command
    assert "--bf16 False --fp16_opt_level O1 --amp_master_grad False --split_param False --max_grad_norm 0" in command
    assert "sharding_degree: 2" in log and "gradient_accumulation_steps   : 2" in log
    assert len(re.findall(r" - loss: [0-9.]+,", log)) == 3
    assert [path.name for path in out.glob("checkpoint-*")] == ["checkpoint-2"]
    assert (out / "checkpoint-2" / COMPLETE_MARKER).is_file()
    assert list((out / "runs").iterdir())  # visualdl wrote its logs
    before, after = tensors(tiny), tensors(str(out))
    assert before.keys() == after.keys()  # LoRA merged away, nothing added
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert changed and not any(name.startswith("vision_model.") for name in changed)  # frozen backbone
    assert any(name.startswith("mlp1.") for name in changed) == (mode == "full")
    if mode == "lora":
        assert all(re.search(r"\.(wqkv|wo|w1|w2|w3)\.weight$", name) for name in changed), sorted(changed)
