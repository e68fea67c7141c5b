"""The 14 second-fine-tuning shell scripts: syntax, the exact launch command, and argument checks (DRY_RUN=1)."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from paddlemix.examples.internvl2.internvl_chat_finetune import main
from reference import REPO_ROOT, require_asset
from test_finetune_data import write_synthetic_dataset

SHELL_DIR = REPO_ROOT / "paddlemix" / "examples" / "internvl2" / "shell" / "internvl2.0" / "2nd_finetune"
FINETUNE_PY = REPO_ROOT / "paddlemix" / "examples" / "internvl2" / "internvl_chat_finetune.py"
# size prefix -> (template, learning rate, full weight decay, LoRA weight decay, full drop path, sharding);
# 26B-76B split their language model with tensor parallelism (see TENSOR_PARALLEL) instead of stage3.
OFFICIAL = {
    "internvl2_1b_qwen2_0_5b": ("Hermes-2", "4e-5", "0.01", "0.01", "0.1", "stage1"),
    "internvl2_2b_internlm2_1_8b": ("internlm2-chat", "4e-5", "0.01", "0.01", "0.1", "stage1"),
    "internvl2_4b_phi3_3_8b": ("phi3-chat", "4e-5", "0.01", "0.01", "0.1", "stage1"),
    "internvl2_8b_internlm2_7b": ("internlm2-chat", "4e-5", "0.05", "0.01", "0.1", "stage1"),
    "internvl2_26b_internlm2_20b": ("internlm2-chat", "2e-5", "0.05", "0.05", "0.4", "stage1"),
    "internvl2_40b_hermes2_yi_34b": ("Hermes-2", "2e-5", "0.05", "0.05", "0.4", "stage1"),
    "internvl2_76b_hermes2_llama3_70b": ("internlm2-chat", "2e-5", "0.05", "0.05", "0.4", "stage1"),
}
SCRIPTS = [f"{size}_dynamic_res_2nd_finetune_{mode}.sh" for size in OFFICIAL for mode in ("full", "lora")]
# The degrees that fit 80 GB cards by paddlemix.models.internvl2.memory (the others: 1).
TENSOR_PARALLEL = {"internvl2_26b_internlm2_20b_dynamic_res_2nd_finetune_full.sh": 8,
                   "internvl2_26b_internlm2_20b_dynamic_res_2nd_finetune_lora.sh": 2,
                   "internvl2_40b_hermes2_yi_34b_dynamic_res_2nd_finetune_full.sh": 8,
                   "internvl2_40b_hermes2_yi_34b_dynamic_res_2nd_finetune_lora.sh": 2,
                   "internvl2_76b_hermes2_llama3_70b_dynamic_res_2nd_finetune_full.sh": 8,
                   "internvl2_76b_hermes2_llama3_70b_dynamic_res_2nd_finetune_lora.sh": 8}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shell")
    return {"MODEL": str(require_asset("tokenizers", "internvl2-1b")), "META_PATH": write_synthetic_dataset(root),
            "OUTPUT_DIR": str(root / "out"), "PYTHON": sys.executable}


def _run(script, env, *args):
    return subprocess.Popen(["bash", str(SHELL_DIR / script), *args], env=dict(os.environ, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)


def _arguments(command):
    """{--flag: value} of the training arguments in a printed launch command."""
    words = shlex.split(command)
    script = words.index(str(FINETUNE_PY))
    rest = words[script + 1:]
    return words[:script], dict(zip(rest[::2], rest[1::2]))


def test_every_script_exists_and_parses():
    assert sorted(path.name for path in SHELL_DIR.glob("internvl2_*.sh")) == sorted(SCRIPTS)
    for path in SHELL_DIR.glob("*.sh"):
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{path.name}: {proc.stderr}"


def _recording_python(tmp_path):
    """A stand-in interpreter that records the arguments the script hands to it (NUL-separated)."""
    path = tmp_path / "record_argv"
    path.write_text('#!/bin/sh\nprintf "%s\\0" "$@" > "$ARGV_FILE"\n')
    path.chmod(0o755)
    return str(path)


def test_dry_runs_print_the_official_launch_command(inputs, tmp_path):
    recorder = _recording_python(tmp_path)
    for script in SCRIPTS:
        env = dict(inputs, DRY_RUN="1", PYTHON=recorder, ARGV_FILE=str(tmp_path / f"{script}.argv"))
        stdout, stderr = _run(script, env).communicate(timeout=60)
        summary, command = stdout.splitlines()
        launcher, args = _arguments(command)
        size, mode = script[:-len(".sh")].split("_dynamic_res_2nd_finetune_")
        template, lr, full_decay, lora_decay, drop_path, sharding = OFFICIAL[size]
        gpus = int(summary.split(": ")[1].split()[0])
        per_device = int(args["--per_device_train_batch_size"])
        accumulation = int(args["--gradient_accumulation_steps"])
        assert launcher == [recorder, "-m", "paddle.distributed.launch", "--devices",
                            ",".join(map(str, range(gpus))), "--log_dir", inputs["OUTPUT_DIR"] + "/launch_logs"]
        tensor_parallel = int(args["--tensor_parallel_degree"])
        assert tensor_parallel == TENSOR_PARALLEL.get(script, 1), script
        assert gpus // tensor_parallel * per_device * accumulation == (128 if mode == "full" else 16), script
        assert args["--conv_style"] == template and args["--learning_rate"] == lr, script
        assert args["--weight_decay"] == (full_decay if mode == "full" else lora_decay), script
        assert args["--drop_path_rate"] == (drop_path if mode == "full" else "0.0"), script
        assert args["--sharding"] == sharding and args["--freeze_backbone"] == "True", script
        assert args.get("--use_llm_lora") == ("16" if mode == "lora" else None), script
        assert args["--freeze_llm"] == args["--freeze_mlp"] == ("True" if mode == "lora" else "False"), script
        shared = {"--lr_scheduler_type": "cosine", "--warmup_ratio": "0.03", "--bf16": "True",
                  "--num_train_epochs": "1", "--max_seq_length": "4096", "--max_dynamic_patch": "6",
                  "--force_image_size": "448", "--down_sample_ratio": "0.5", "--ps_version": "v2",
                  "--dynamic_image_size": "True", "--use_thumbnail": "True", "--grad_checkpoint": "True",
                  "--group_by_length": "True", "--model_name_or_path": inputs["MODEL"],
                  "--meta_path": inputs["META_PATH"], "--output_dir": inputs["OUTPUT_DIR"], "--device": "gpu"}
        assert {key: args[key] for key in shared} == shared, script
        # What the dry run hands to Python: the same training arguments plus --dry_run True.
        handed = (tmp_path / f"{script}.argv").read_text().split("\0")[:-1]
        assert handed == [str(FINETUNE_PY)] + shlex.split(command)[len(launcher) + 1:] + ["--dry_run", "True"]
    assert not Path(inputs["OUTPUT_DIR"]).exists()  # a dry run launches nothing


def test_every_scripts_arguments_pass_the_python_checks(inputs, tmp_path):
    recorder = _recording_python(tmp_path)
    for script in SCRIPTS:
        env = dict(inputs, DRY_RUN="1", PYTHON=recorder, ARGV_FILE=str(tmp_path / f"{script}.argv"))
        assert _run(script, env).wait(timeout=60) == 0
    for script in SCRIPTS:
        argv = (tmp_path / f"{script}.argv").read_text().split("\0")[1:-1]
        assert argv[-2:] == ["--dry_run", "True"]
        assert main(argv) is None, script  # parses, passes every check, trains nothing


def test_npu_runs_set_the_ascend_flags_and_launch_on_npus(inputs, tmp_path):
    # A stand-in interpreter that shows the environment the trainer would start in.
    show_flags = tmp_path / "show_flags"
    show_flags.write_text("#!/bin/sh\nenv | grep -E '^(FLAGS_(npu|use_stride)|CUSTOM_DEVICE_BLACK_LIST)' | sort\n")
    show_flags.chmod(0o755)
    env = dict(inputs, DRY_RUN="1", DEVICE="npu", GPUS="4", PER_DEVICE_BATCH_SIZE="2", PYTHON=str(show_flags))
    proc = _run("internvl2_2b_internlm2_1_8b_dynamic_res_2nd_finetune_lora.sh", env, "--max_steps", "1")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    summary, command, *flags = stdout.splitlines()
    expected = ["CUSTOM_DEVICE_BLACK_LIST=set_value,set_value_with_tensor", "FLAGS_npu_jit_compile=0",
                "FLAGS_npu_scale_aclnn=True", "FLAGS_npu_split_aclnn=True", "FLAGS_npu_storage_format=0",
                "FLAGS_use_stride_kernel=0"]
    assert flags == expected * 2  # the memory estimate, then the trainer: both see them
    launcher, args = _arguments(command)
    assert "4 npu(s) x 2 per device x 2 accumulation / 1 tensor-parallel = global batch 16" in summary
    assert launcher[launcher.index("--devices") + 1] == "0,1,2,3"
    assert args["--device"] == "npu" and args["--max_steps"] == "1"  # extra arguments are passed through


@pytest.mark.parametrize("env, args, message", [
    ({"BATCH_SIZE": "100"}, (), "BATCH_SIZE=100 is not a multiple of PER_DEVICE_BATCH_SIZE * GPUS / TENSOR_PARALLEL "
                                "= 32"),
    ({"TENSOR_PARALLEL": "3"}, (), "GPUS=8 is not divisible by TENSOR_PARALLEL=3"),
    ({"DEVICE_GIB": "1"}, (), "exceeds the 1 GiB of each card; use more cards or a larger tensor-parallel degree"),
    ({"GPUS": "zero"}, (), "GPUS must be a positive integer, not 'zero'"),
    ({"DEVICE": "tpu"}, (), "DEVICE must be gpu, npu or cpu, not 'tpu'"),
    ({}, ("--lerning_rate", "1e-4"), "not used by the PdArgumentParser: ['--lerning_rate', '1e-4']"),
])
def test_dry_runs_reject_bad_arguments(inputs, env, args, message):
    proc = _run("internvl2_1b_qwen2_0_5b_dynamic_res_2nd_finetune_full.sh", dict(inputs, DRY_RUN="1", **env), *args)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert message in stderr


@pytest.mark.parametrize("change, message", [
    ({"META_PATH": "/nonexistent/meta.json"}, "cannot read meta file '/nonexistent/meta.json'"),
    ({"MODEL": "./pretrained/InternVL2-1B"}, "is not a local directory and not a hub id"),
    ({"--conv_style": "chatml"}, "--conv_style 'chatml' is not one of"),
    ({"--down_sample_ratio": "0.25"}, "differs from the checkpoint's 0.5"),
])
def test_the_python_checks_name_the_problem(inputs, tmp_path, change, message):
    recorder = _recording_python(tmp_path)
    env = dict(inputs, DRY_RUN="1", PYTHON=recorder, ARGV_FILE=str(tmp_path / "argv"),
               **{key: value for key, value in change.items() if not key.startswith("--")})
    extra = [word for key, value in change.items() if key.startswith("--") for word in (key, value)]
    assert _run("internvl2_1b_qwen2_0_5b_dynamic_res_2nd_finetune_full.sh", env, *extra).wait(timeout=60) == 0
    argv = (tmp_path / "argv").read_text().split("\0")[1:-1]
    with pytest.raises(ValueError, match=re.escape(message)):
        main(argv)
