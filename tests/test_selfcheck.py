"""`python -m paddlemix.selfcheck`: every fast path against the plain float32 ops, one row each."""
import os
import subprocess
import sys

import paddle
import paddle.incubate.nn.functional as IF
import paddle.nn.functional as F
import pytest

from paddlemix import selfcheck
from paddlemix.models.internvl2 import kernels, quant
from reference import REPO_ROOT
from test_kernels import HAS_AVX512, _reference_rms_norm, _reference_rope


def test_selfcheck_passes_on_this_cpu_and_prints_a_row_per_path():
    proc = subprocess.run([sys.executable, "-m", "paddlemix.selfcheck"], capture_output=True, text=True,
                          timeout=600, cwd=REPO_ROOT, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"paddle {paddle.__version__}") and lines[1] == "build: CPU only"
    assert "avx512f=" in lines[3]
    mkl_type = os.environ.get("MKL_DEBUG_CPU_TYPE")  # this process imported paddlemix, as the child does
    why = " (its AVX2 kernels on a CPU not made by Intel)" if mkl_type == "5" else ""
    expected = "mkl: its own choice of kernels" if mkl_type is None else f"mkl: MKL_DEBUG_CPU_TYPE={mkl_type}{why}"
    assert lines[4] == expected
    for structure in selfcheck.STRUCTURES:
        rows = [line.split() for line in lines if line.strip().startswith(structure)]
        assert [row[1] for row in rows if row[1] in kernels.FAST_PATHS] == list(kernels.FAST_PATHS)
        assert " ".join(rows[0][2:4]) == ("used max|d" if HAS_AVX512 else "not taken")  # rms_norm: AVX-512 only
        assert any("weight-only int8" in " ".join(row) for row in rows)
    assert lines[-1].startswith("verdict: ok")
    assert proc.stderr == ""  # a quiet terminal: third-party notices are held back


def test_the_structures_are_the_real_ones():
    one, two = selfcheck.build_config("InternVL2-1B"), selfcheck.build_config("InternVL2-2B")
    assert (one.llm.family, one.llm.qkv_bias, one.llm.head_dim, one.template) == ("qwen2", True, 64, "Hermes-2")
    assert one.llm.num_attention_heads // one.llm.num_key_value_heads == 14 // 2
    assert (two.llm.family, two.llm.head_dim, two.llm.rope_scaling, two.template) == (
        "internlm2", 128, {"type": "dynamic", "factor": 2.0}, "internlm2-chat")
    assert one.num_image_token == 256 and one.ps_version == "v2"
    assert one.vision.hidden_size // one.vision.num_attention_heads == 64


def test_a_wrong_fast_path_fails_the_check(monkeypatch, capsys):
    real = F.swiglu
    monkeypatch.setattr(F, "swiglu", lambda x: real(x) * 1.01)
    with pytest.raises(SystemExit) as exit_info:
        selfcheck.main([])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    # Only where Paddle's swiglu is the path taken: with every path on, the C++ SwiGLU runs instead.
    assert [line.split()[1] for line in out.splitlines() if line.rstrip().endswith("FAIL")] == ["swiglu", "swiglu"]
    assert "verdict: FAIL, 2 path(s)" in out


def test_on_a_gpu_every_gpu_path_gets_a_row(monkeypatch):
    """No GPU here: the GPU dispatch is forced, Paddle's CPU SDPA runs, RoPE (no CPU kernel) is stood in for."""
    monkeypatch.setattr(kernels, "fused_enabled", lambda tensor: True)
    monkeypatch.setattr(quant, "fused_enabled", lambda tensor: False)  # Paddle's int8 kernel is GPU-only
    monkeypatch.setattr(IF, "fused_rotary_position_embedding", _reference_rope)
    if not HAS_AVX512:
        monkeypatch.setattr(IF, "fused_rms_norm", _reference_rms_norm)
    rows = selfcheck.check_rows("InternVL2-1B", "gpu", [])
    used = {row[0]: row[1] for row in rows}
    assert used == {"rms_norm": True, "rope": True, "sdpa": True, "swiglu": True, "addmm": False, "native": False,
                    "all fast paths, float32": True, "weight-only int8": True}
    assert all(row[-1] for row in rows), rows


def test_without_avx512_the_fused_rms_norm_is_not_taken(monkeypatch):
    monkeypatch.setattr(paddle.base.core, "supports_avx512f", lambda: False)
    rows = selfcheck.check_rows("InternVL2-2B", "cpu", [])
    assert rows[0][:2] == ("rms_norm", False) and all(row[-1] for row in rows)


def test_a_path_that_raises_is_a_failed_row_not_a_crash(monkeypatch):
    def broken(language_model, method):
        raise RuntimeError("no int8 kernel for this device\nmore detail")

    monkeypatch.setattr(quant, "quantize_language_model", broken)
    row = selfcheck.check_rows("InternVL2-1B", "cpu", [])[-1]
    assert row == ("weight-only int8", True, None, "RuntimeError: no int8 kernel for this device", False)
    assert selfcheck.format_row("InternVL2-1B", row).endswith("raised RuntimeError: no int8 kernel for this device  FAIL")


def test_the_bench_decodes_with_the_real_1b_language_model_sizes():
    import json

    from reference import require_asset

    with open(require_asset("tokenizers", "internvl2-1b", "config.json"), encoding="utf-8") as f:
        real = json.load(f)["llm_config"]
    assert selfcheck.REAL_1B_LLM == {key: real[key] for key in selfcheck.REAL_1B_LLM}
    config = selfcheck.build_config("InternVL2-1B", **selfcheck.REAL_1B_LLM)
    assert (config.llm.family, config.llm.num_hidden_layers, config.llm.head_dim) == ("qwen2", 24, 64)


def test_the_tensor_parallel_row_splits_the_model_over_two_ranks():
    """The row runs on two GPUs only; here its ranks are two CPU processes (gloo instead of NCCL)."""
    assert selfcheck.tensor_parallel_row("cpu") is None
    path, used, delta, tokens_equal, ok = selfcheck.run_tensor_parallel(["--nproc_per_node", "2"])
    assert (path, used, tokens_equal, ok) == ("tensor parallel, 2 ranks", True, True, True), delta
    assert delta <= selfcheck.TOLERANCE["float32"]
