"""The model runs on CPUs without AVX-512, and gives the same numbers there.

Paddle's fused RMSNorm CPU kernel is AVX-512 code that never checks the CPU, so on an AVX2-only
machine it kills the process. Two checks that cannot pass by luck of the machine:
* the "no AVX-512" CPU is simulated by patching Paddle's feature query, with a recorder proving
  that no AVX-512-only kernel is called, and the numbers compared with the fused path;
* the model really runs on an emulated CPU without AVX-512 (qemu-user, Haswell: AVX2 and FMA),
  where any AVX-512 instruction faults.
"""
import os
import platform
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import paddle.incubate.nn.functional as IF
import pytest

import paddlemix
from conftest import random_pixels
from paddlemix.models.internvl2 import InternVLChatModel, kernels, native
from test_kernels import HAS_AVX512, _image_inputs, _logits

GREEDY = dict(max_new_tokens=6, do_sample=False)


# The Paddle functions behind the kernels of CPU_KERNEL_NEEDS.
AVX512_ONLY_KERNELS = {"rms_norm": (IF, "fused_rms_norm")}


@pytest.fixture
def avx512_kernel_calls(monkeypatch):
    """Counts the calls of every AVX-512-only Paddle kernel (they still run where the CPU has AVX-512)."""
    assert set(AVX512_ONLY_KERNELS) == set(kernels.CPU_KERNEL_NEEDS)
    calls = dict.fromkeys(kernels.CPU_KERNEL_NEEDS, 0)
    for name, (module, attr) in AVX512_ONLY_KERNELS.items():
        original = getattr(module, attr)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            if not paddle.base.core.supports_avx512f():
                raise AssertionError(f"{_name}'s AVX-512 kernel ran on a CPU reported without AVX-512")
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, attr, counted)
    return calls


def _without_avx512(monkeypatch):
    monkeypatch.setattr(paddle.base.core, "supports_avx512f", lambda: False)


def _run_everything(model, tokenizer):
    """Logits of an image prompt and of a padded batch, greedy tokens, a chat and a batch_chat."""
    pixels, ids = _image_inputs(model, tokenizer)
    batch_ids = paddle.to_tensor(np.random.RandomState(5).randint(0, 151000, size=(2, 9)))
    padded = paddle.to_tensor([[0, 0, 0] + [1] * 6, [1] * 9], dtype="int64")
    with paddle.no_grad():
        batch_logits = model.language_model(model.language_model.embed_tokens(batch_ids), padded)
    tokens = model.generate(pixel_values=pixels, input_ids=ids, max_new_tokens=6, do_sample=False, eos_token_id=None)
    answer = model.chat(tokenizer, random_pixels(2, 1), "<image>\nWhat is this?", GREEDY)
    answers = model.batch_chat(tokenizer, paddle.concat([random_pixels(1, 2), random_pixels(2, 3)]),
                               ["<image>\nDescribe it.", "What colour is it?"], GREEDY, num_patches_list=[1, 2])
    return dict(logits=_logits(model, pixels, ids), batch_logits=batch_logits.numpy(), tokens=tokens.numpy(),
                answers=[answer] + answers)


# Paddle's own fast paths: with this project's C++ kernels on, its CPU RMSNorm is never reached.
PADDLE_PATHS = sorted(set(kernels.FAST_PATHS) - {"native"})


def test_without_avx512_no_avx512_kernel_runs_and_the_numbers_are_the_fused_paths(model, tokenizer, monkeypatch,
                                                                                   avx512_kernel_calls):
    with kernels.only_fast_paths(*PADDLE_PATHS):
        fused = _run_everything(model, tokenizer)
    assert (avx512_kernel_calls["rms_norm"] > 0) == HAS_AVX512  # here the fused path really ran
    with pytest.MonkeyPatch.context() as patch, kernels.only_fast_paths(*PADDLE_PATHS):
        _without_avx512(patch)
        calls_before = dict(avx512_kernel_calls)
        plain = _run_everything(model, tokenizer)
        assert avx512_kernel_calls == calls_before, "an AVX-512-only kernel ran on a CPU without AVX-512"
    for key in ("logits", "batch_logits"):
        assert np.abs(plain[key] - fused[key]).max() <= 1e-5, key
    np.testing.assert_array_equal(plain["tokens"], fused["tokens"])
    assert plain["answers"] == fused["answers"]


def test_the_choice_follows_the_cpu_at_run_time_and_is_logged(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "_logged_choices", set())
    with caplog.at_level("DEBUG", logger=kernels.__name__):
        _without_avx512(monkeypatch)
        assert not kernels.cpu_kernel_runs("rms_norm")
        assert not kernels.cpu_kernel_runs("rms_norm")
        monkeypatch.setattr(paddle.base.core, "supports_avx512f", lambda: True)
        assert kernels.cpu_kernel_runs("rms_norm")
    assert kernels.cpu_kernel_runs("swiglu")  # plain C++ kernels need nothing
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["CPU kernel of rms_norm: the plain ops (this CPU lacks avx512f)",
                     "CPU kernel of rms_norm: Paddle's fused kernel"]


@pytest.mark.skipif(not HAS_AVX512, reason="Paddle's fused RMSNorm CPU kernel is AVX-512 code; this CPU lacks it")
def test_paddles_avx512_rms_norm_kernel_gives_the_plain_numbers(monkeypatch):
    x = paddle.to_tensor(np.random.RandomState(0).standard_normal((17, 1025)).astype(np.float32))
    weight = paddle.to_tensor(np.random.RandomState(1).standard_normal(1025).astype(np.float32))
    with paddle.no_grad(), kernels.only_fast_paths(*PADDLE_PATHS):
        fused = kernels.rms_norm(x, weight, 1e-6).numpy()
        _without_avx512(monkeypatch)
        plain = kernels.rms_norm(x, weight, 1e-6).numpy()
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-5)


def test_the_kernel_tests_pass_as_on_a_cpu_without_avx512():
    """test_kernels.py and the checks above, again with Paddle's feature query saying "no AVX-512"."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels.py",
                           "tests/test_portability.py", "-k", "not emulated and not as_on_a_cpu"], cwd=repo,
                          env=dict(os.environ, PADDLEMIX_SIMULATE_NO_AVX512="1"), capture_output=True, text=True)
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " 1 skipped" in summary and "failed" not in summary  # only the AVX-512 kernel's own check


# --- MKL's kernels on CPUs not made by Intel ----------------------------------------------------
HAS_AVX2_FMA = paddlemix.cpu_has_avx2_fma()


def test_mkl_is_asked_for_its_avx2_kernels_only_off_intel_and_with_avx2():
    assert paddlemix.mkl_cpu_type("AuthenticAMD", True) == "5"
    assert paddlemix.mkl_cpu_type("HygonGenuine", True) == "5"
    assert paddlemix.mkl_cpu_type("GenuineIntel", True) is None  # MKL picks its best kernels itself
    assert paddlemix.mkl_cpu_type("AuthenticAMD", False) is None  # its AVX2 kernels would fault
    assert paddlemix.mkl_cpu_type("", True) is None


def _mkl_type_after_import(**env):
    environment = {key: value for key, value in os.environ.items() if key != "MKL_DEBUG_CPU_TYPE"}
    code = "import os, paddlemix; print(repr(os.environ.get('MKL_DEBUG_CPU_TYPE')))"
    done = subprocess.run([sys.executable, "-c", code], env=dict(environment, **env), capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def test_import_sets_the_mkl_cpu_type_from_this_cpu_and_keeps_the_users():
    expected = paddlemix.mkl_cpu_type(paddlemix._cpu_vendor(), HAS_AVX2_FMA) if IS_X86 else None
    assert _mkl_type_after_import() == repr(expected)
    assert _mkl_type_after_import(MKL_DEBUG_CPU_TYPE="4") == "'4'"


@pytest.mark.skipif(native._mkl_flags() == ([], []), reason="this Paddle wheel ships no MKL BLAS")
@pytest.mark.skipif(not HAS_AVX2_FMA, reason="MKL's AVX2 kernels need AVX2 and FMA")
def test_the_kernel_tests_pass_with_mkls_other_choice_of_kernels():
    """Where import set type 5 (not Intel), MKL's own choice again; elsewhere its AVX2 kernels by type 5."""
    other = "" if os.environ.get("MKL_DEBUG_CPU_TYPE") == "5" else "5"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_native_kernels.py", "-k", "gemm or attention or decode_layer"], cwd=repo,
                          env=dict(os.environ, MKL_DEBUG_CPU_TYPE=other), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


# --- a real CPU without AVX-512, emulated -------------------------------------------------------
QEMU = shutil.which("qemu-x86_64")
QEMU_CPU = "Haswell"  # AVX2 + FMA, no AVX-512: what AMD Zen 1-3 and Intel client chips offer
IS_X86 = platform.machine() in ("x86_64", "AMD64")
DEMO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "paddlemix", "demo_images")
IMAGE, VIDEO = os.path.join(DEMO_DIR, "examples_image1.jpg"), os.path.join(DEMO_DIR, "demo_clip.mp4")


def _require_qemu():
    if not IS_X86:
        pytest.skip("the emulated AVX2-only CPU is an x86-64 check")
    if QEMU is None:
        if os.environ.get("PADDLEMIX_REQUIRE_QEMU") == "1":
            pytest.fail("qemu-x86_64 is missing; `make qemu` installs it (Debian's qemu-user)")
        pytest.skip("qemu-x86_64 is absent (`make qemu` installs Debian's qemu-user)")


def _emulated(code, timeout):
    """Run python `code` on an emulated Haswell CPU; (exit code, output)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    try:
        done = subprocess.run([QEMU, "-cpu", QEMU_CPU, sys.executable, "-c", textwrap.dedent(code)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        # qemu-user does not always end a process that faults inside a threaded library: it hangs.
        return "timeout", (expired.stdout or b"").decode() + (expired.stderr or b"").decode()
    return done.returncode, done.stdout + done.stderr


def test_the_emulated_cpu_really_faults_on_avx512(tmp_path):
    """The check below means something only if the emulated CPU rejects AVX-512 instructions."""
    _require_qemu()
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the AVX-512 probe")
    source = tmp_path / "probe.c"
    source.write_text('int main(void) { __asm__ volatile("vpxord %zmm1, %zmm1, %zmm1"); return 0; }\n')
    subprocess.run([compiler, "-O0", "-o", str(tmp_path / "probe"), str(source)], check=True)
    assert subprocess.run([str(tmp_path / "probe")]).returncode == (0 if HAS_AVX512 else -4)
    emulated = subprocess.run([QEMU, "-cpu", QEMU_CPU, str(tmp_path / "probe")], capture_output=True)
    assert emulated.returncode == -4, "qemu's Haswell ran an AVX-512 instruction"  # SIGILL


def test_chat_batch_chat_and_a_training_step_run_on_an_emulated_cpu_without_avx512(tiny_1b, tmp_path):
    _require_qemu()
    tiny_bf16 = str(tmp_path / "bf16")
    InternVLChatModel.from_pretrained(tiny_1b).save_pretrained(tiny_bf16, dtype="bfloat16")
    code, output = _emulated(f"""
        import numpy as np, paddle
        from paddlemix.models.internvl2 import InternVLChatModel, kernels, load_image, load_tokenizer, load_video
        assert not paddle.base.core.supports_avx512f()
        assert kernels.native_isa()[0] == "avx2", kernels.native_isa()  # this project's kernels: the AVX2 body
        pixels = load_image({IMAGE!r}, max_num=2)
        frames, _ = load_video({VIDEO!r}, num_segments=2)
        print("preprocessed:", pixels.shape, frames.shape)
        model, tokenizer = InternVLChatModel.from_pretrained({tiny_1b!r}), load_tokenizer({tiny_1b!r})
        greedy = dict(max_new_tokens=3, do_sample=False)
        print("chat:", repr(model.chat(tokenizer, pixels, "<image>\\nWhat is this?", greedy)))
        print("batch_chat:", model.batch_chat(tokenizer, None, ["Hi", "Hello there"], greedy))
        int8 = InternVLChatModel.from_pretrained({tiny_1b!r}, quant="weight_only_int8")
        print("int8:", repr(int8.chat(tokenizer, None, "Hi", greedy)))
        bf16 = InternVLChatModel.from_pretrained({tiny_bf16!r})
        assert type(bf16.language_model.lm_head).__name__ == "Bf16Linear"
        print("bf16 weights:", repr(bf16.chat(tokenizer, None, "Hi", greedy)))
        model.train()
        ids = paddle.to_tensor(np.random.RandomState(1).randint(0, 151000, (1, 8)))
        embeds = model.language_model.embed_tokens(ids)
        model.language_model(embeds, paddle.ones([1, 8], "int64")).mean().backward()
        paddle.optimizer.AdamW(parameters=model.language_model.parameters()).step()
        print("trained: ok")
    """, timeout=900)
    assert code == 0, f"exit {code} on an emulated {QEMU_CPU} CPU:\n{output[-3000:]}"
    for step in ("preprocessed:", "chat:", "batch_chat:", "int8:", "bf16 weights:", "trained: ok"):
        assert step in output, output[-3000:]
