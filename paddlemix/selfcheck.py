"""Does this device give the official numbers? `python -m paddlemix.selfcheck [--device gpu:0] [--bench]`

Builds small random models with the real InternVL2-1B (Qwen2) and 2B (InternLM2, dynamic RoPE)
structure, no download, and runs every fast path this device takes, one at a time and then all
together, against the plain float32 ops on the same weights. One row per path: whether the device
takes it, max |delta logits| (relative to the largest logit) and whether the greedy tokens agree.
Exit 0 when every row is within its dtype's tolerance. Run it first on a new GPU or NPU, and
send its whole output with a bug report. With two or more GPUs visible, one more row splits the
2B structure's language model over two of them (tensor parallelism, NCCL) and compares it with the
one-device float32 numbers.
"""
import argparse
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time

from paddlemix.cli import run_main, setup_logging

# The structural switches of the real config.json files, at small widths and two layers each; the
# head sizes (64 in the ViT and Qwen2, 128 in InternLM2) and the query-per-KV-head ratios are real.
_VISION = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, image_size=448,
               patch_size=14, qkv_bias=True, qk_normalization=False, norm_type="layer_norm", layer_norm_eps=1e-6,
               hidden_act="gelu")
STRUCTURES = {
    "InternVL2-1B": dict(template="Hermes-2", llm_config=dict(
        architectures=["Qwen2ForCausalLM"], vocab_size=2048, hidden_size=448, intermediate_size=1216,
        num_hidden_layers=2, num_attention_heads=7, num_key_value_heads=1, rms_norm_eps=1e-6, rope_theta=1e6,
        max_position_embeddings=32768, tie_word_embeddings=False)),
    "InternVL2-2B": dict(template="internlm2-chat", llm_config=dict(
        architectures=["InternLM2ForCausalLM"], vocab_size=2048, hidden_size=512, intermediate_size=1024,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=1e6,
        rope_scaling={"type": "dynamic", "factor": 2.0}, max_position_embeddings=32768, bias=False)),
}
# max |delta logits| / max |logits| each path may show against the plain float32 ops.
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2, "int8": 5e-2}
NEW_TOKENS = 8
# --bench decodes with the real InternVL2-1B language model's sizes.
REAL_1B_LLM = dict(vocab_size=151655, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                   num_attention_heads=14, num_key_value_heads=2)
IMAGE_CONTEXT_ID = 2000  # any id of the small vocabulary; the model replaces these by image features


def build_config(name, **llm_sizes):
    """The config of structure `name`, its language model's sizes replaced by `llm_sizes`."""
    from paddlemix.models.internvl2 import InternVLChatConfig

    raw = dict(STRUCTURES[name], vision_config=dict(_VISION), architectures=["InternVLChatModel"],
               force_image_size=448, downsample_ratio=0.5, ps_version="v2", select_layer=-1)
    raw["llm_config"] = dict(raw["llm_config"], **llm_sizes)
    return InternVLChatConfig.from_dict(raw)


def build_model(name, seed=0, **llm_sizes):
    import paddle
    from paddlemix.models.internvl2 import InternVLChatModel

    paddle.seed(seed)
    model = InternVLChatModel(build_config(name, **llm_sizes))
    model.img_context_token_id = IMAGE_CONTEXT_ID
    model.eval()
    return model


def model_inputs(model, seed=0):
    """One random 448px tile and a prompt around its image tokens."""
    import numpy as np
    import paddle

    rng = np.random.RandomState(seed)
    ids = np.concatenate([rng.randint(0, 1000, 6), np.full(model.num_image_token, IMAGE_CONTEXT_ID),
                          rng.randint(0, 1000, 9)])
    pixels = rng.standard_normal((1, 3, 448, 448)).astype("float32")
    return paddle.to_tensor(pixels), paddle.to_tensor(ids[None].astype("int64"))


def run(model, pixels, ids, dtype="float32"):
    """(float32 logits of the prompt, greedy token ids) on `model` as it is."""
    import paddle

    pixels = pixels.astype(dtype)
    with paddle.no_grad():
        logits = model(pixels, ids)["logits"].astype("float32").numpy()
    tokens = model.generate(pixel_values=pixels, input_ids=ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                            eos_token_id=None).numpy()
    return logits, tokens


def compare(reference, got, tolerance):
    """(relative max |delta logits|, tokens equal, within tolerance)."""
    import numpy as np

    delta = float(np.abs(got[0] - reference[0]).max() / max(1.0, float(np.abs(reference[0]).max())))
    return delta, bool(np.array_equal(got[1], reference[1])), delta <= tolerance


def device_kind(device):
    """"gpu", "cpu" or "other" (NPUs and other custom devices) for a Paddle device string."""
    if device.startswith("gpu"):
        return "gpu"
    return "cpu" if device == "cpu" else "other"


def low_precision_dtypes(kind):
    """The half-precision dtypes to check: a GPU's, an NPU's; none on CPU (Paddle has no CPU bf16/fp16 math)."""
    import paddle

    if kind == "cpu":
        return []
    if kind == "gpu" and not paddle.amp.is_bfloat16_supported():
        return ["float16"]
    return ["bfloat16", "float16"]


def check_rows(name, kind, dtypes):
    """Every row for one structure: (path, used, relative delta, tokens equal, ok)."""
    from paddlemix.models.internvl2 import kernels

    model = build_model(name)
    pixels, ids = model_inputs(model)
    with kernels.only_fast_paths():
        reference = run(model, pixels, ids)
    rows = []
    for path in kernels.FAST_PATHS:
        if not kernels.device_takes(path, kind):
            rows.append((path, False, None, None, True))
            continue
        with kernels.only_fast_paths(path):
            rows.append(_row(path, reference, lambda: run(model, pixels, ids), "float32"))
    rows.append(_row("all fast paths, float32", reference, lambda: run(model, pixels, ids), "float32"))
    for dtype in dtypes:
        rows.append(_row(f"all fast paths, {dtype}", reference,
                         lambda dtype=dtype: _run_converted(name, pixels, ids, dtype), dtype))
    # Paddle's int8 GPU kernel takes half-precision activations.
    int8_dtype = dtypes[0] if dtypes else "float32"
    rows.append(_row("weight-only int8", reference, lambda: _run_converted(name, pixels, ids, int8_dtype, int8=True),
                     "int8"))
    return rows


def _run_converted(name, pixels, ids, dtype, int8=False):
    from paddlemix.models.internvl2.quant import quantize_language_model

    model = build_model(name)
    if dtype != "float32":
        model.to(dtype=dtype)
    if int8:
        quantize_language_model(model.language_model, "weight_only_int8")
    return run(model, pixels, ids, dtype)


def _row(path, reference, compute, tolerance_key):
    """One used path's row; a path that raises is a failed row that says why, not a crash of the check.

    Only float32 rows need equal greedy tokens: rounded weights may flip a near-tie of the random
    model's logits, so elsewhere the tokens are reported, not required.
    """
    try:
        got = compute()
    except Exception as error:  # noqa: BLE001  (a diagnostic: every failure becomes a row)
        return (path, True, None, f"{type(error).__name__}: {str(error).strip().splitlines()[0][:120]}", False)
    delta, tokens_equal, within = compare(reference, got, TOLERANCE[tolerance_key])
    return (path, True, delta, tokens_equal, within and (tokens_equal or tolerance_key != "float32"))


TENSOR_PARALLEL_STRUCTURE = "InternVL2-2B"  # InternLM2: its grouped wqkv is split by whole KV groups


def tensor_parallel_row(kind):
    """The tensor-parallel row on two GPUs, or None with fewer than two (or on other devices)."""
    import paddle

    if kind != "gpu" or paddle.device.cuda.device_count() < 2:
        return None
    return run_tensor_parallel(["--devices", "0,1"])


def run_tensor_parallel(launch_args, structure=TENSOR_PARALLEL_STRUCTURE):
    """One row: the model split over the two processes `launch_args` starts against this process's
    float32 numbers on the same weights (saved as a checkpoint that each rank reads its slice of)."""
    import numpy as np

    model = build_model(structure)
    pixels, ids = model_inputs(model)
    reference = run(model, pixels, ids)
    path = "tensor parallel, 2 ranks"
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(os.path.join(folder, "model"), dtype="float32")
        np.savez(os.path.join(folder, "inputs.npz"), pixels=pixels.numpy(), ids=ids.numpy())
        command = [sys.executable, "-m", "paddle.distributed.launch", *launch_args, "--log_dir",
                   os.path.join(folder, "logs"), os.path.abspath(__file__), "--tensor-parallel-worker", folder]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            text = done.stderr
            log = os.path.join(folder, "logs", "workerlog.0")
            if os.path.exists(log):
                with open(log, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            lines = [line for line in text.strip().splitlines() if line.strip()]
            return (path, True, None, f"the ranks failed: {lines[-1][:120] if lines else done.returncode}", False)
        result = np.load(os.path.join(folder, "result.npz"))
        return _row(path, reference, lambda: (result["logits"], result["tokens"]), "float32")


def tensor_parallel_worker(folder):
    """One rank of `run_tensor_parallel` (under paddle.distributed.launch); rank 0 writes the result."""
    import numpy as np
    import paddle

    from paddlemix.models.internvl2 import InternVLChatModel
    from paddlemix.models.internvl2.tensor_parallel import TensorParallel

    tp = TensorParallel.over_all_processes()
    model = InternVLChatModel.from_pretrained(os.path.join(folder, "model"), dtype="float32", tensor_parallel=tp)
    model.img_context_token_id = IMAGE_CONTEXT_ID
    inputs = np.load(os.path.join(folder, "inputs.npz"))
    logits, tokens = run(model, paddle.to_tensor(inputs["pixels"]), paddle.to_tensor(inputs["ids"]))
    if tp.rank == 0:
        np.savez(os.path.join(folder, "result.npz"), logits=logits, tokens=tokens)


def environment_lines(kind):
    import numpy as np
    import paddle

    lines = [f"paddle {paddle.__version__} (commit {paddle.version.commit[:10]}), python {platform.python_version()}"]
    if paddle.is_compiled_with_cuda():
        lines.append(f"build: CUDA {paddle.version.cuda()}, cuDNN {paddle.version.cudnn()}")
    elif paddle.device.get_all_custom_device_type():
        lines.append(f"build: custom devices {', '.join(paddle.device.get_all_custom_device_type())} (e.g. CANN)")
    else:
        lines.append("build: CPU only")
    device = paddle.device.get_device()
    if kind == "gpu":
        index = int(device.split(":")[1])
        props = paddle.device.cuda.get_device_properties(index)
        lines.append(f"device: {device}, {props.name}, {props.total_memory / 2 ** 30:.1f} GiB, "
                     f"compute capability {props.major}.{props.minor}")
    elif kind == "cpu":
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        lines.append(f"device: cpu, {memory / 2 ** 30:.1f} GiB of RAM")
    else:
        lines.append(f"device: {device}")
    features = np.core._multiarray_umath.__cpu_features__
    shown = [flag for flag in ("AVX2", "FMA3", "F16C", "AVX512F", "AVX512_SKX", "AVX512_CPX", "AVX512_SPR")
             if features.get(flag)]
    core = paddle.base.core
    lines.append(f"cpu: {platform.machine()} {_cpu_name()}, {os.cpu_count()} cores; features {' '.join(shown) or 'none'}"
                 f"; paddle says avx512f={core.supports_avx512f()} bf16={core.supports_bfloat16()} "
                 f"vnni={core.supports_vnni()}")
    mkl_type = os.environ.get("MKL_DEBUG_CPU_TYPE")
    if mkl_type is None:
        lines.append("mkl: its own choice of kernels")
    else:
        why = " (its AVX2 kernels on a CPU not made by Intel)" if mkl_type == "5" else ""
        lines.append(f"mkl: MKL_DEBUG_CPU_TYPE={mkl_type}{why}")
    return lines


def _cpu_name():
    import paddlemix

    return paddlemix.cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def synchronize(kind):
    import paddle

    if kind != "cpu":  # paddle.device.synchronize() raises on CPU
        paddle.device.synchronize()


def read_bandwidth(kind, nbytes=1 << 30, repeats=5, width=1024):
    """Bytes per second the device reads in a matrix-vector product (what decoding does) over 1 GiB."""
    import paddle

    matrix = paddle.ones([nbytes // 4 // width, width], dtype="float32")
    vector = paddle.ones([width, 1], dtype="float32")
    best = float("inf")
    for _ in range(repeats):
        synchronize(kind)
        start = time.perf_counter()
        paddle.matmul(matrix, vector)
        synchronize(kind)
        best = min(best, time.perf_counter() - start)
    return nbytes / best


def bench_lines(kind, dtype):
    """Decode tok/s at the real InternVL2-1B language-model shape (random weights) and its bandwidth share."""
    import paddle

    model = build_model("InternVL2-1B", **REAL_1B_LLM)
    model.to(dtype=dtype)
    ids = paddle.to_tensor([[1] * 32], dtype="int64")
    new_tokens = 32
    model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, eos_token_id=None)  # warm up
    synchronize(kind)
    start = time.perf_counter()
    model.generate(input_ids=ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None)
    synchronize(kind)
    seconds = time.perf_counter() - start
    lm = model.language_model
    # Each decoded token reads every decoder and head weight once; of the embedding only one row.
    per_token = sum(p.numel().item() * p.element_size() for p in lm.parameters()) - \
        lm.embed_tokens.weight.numel().item() * lm.embed_tokens.weight.element_size()
    bandwidth = read_bandwidth(kind)
    ceiling = bandwidth / per_token
    rate = new_tokens / seconds  # the prefill of 32 tokens is counted in, so this errs low
    return [f"bench: decode {rate:.2f} tok/s ({dtype}, batch 1, real 1B language model, random weights); "
            f"{per_token / 1e9:.2f} GB read per token at {bandwidth / 1e9:.1f} GB/s measured: ceiling "
            f"{ceiling:.1f} tok/s, so {100 * rate / ceiling:.0f}% of it"]


def format_row(structure, row):
    path, used, delta, tokens_equal, ok = row
    if not used:
        return f"  {structure:<13} {path:<26} not taken on this device"
    if delta is None:
        return f"  {structure:<13} {path:<26} used  raised {tokens_equal}  FAIL"
    return (f"  {structure:<13} {path:<26} used  max|d logits| {delta:.2e}  greedy tokens "
            f"{'equal' if tokens_equal else 'DIFFER'}  {'ok' if ok else 'FAIL'}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, gpu:0, npu:0 ... (default: paddle's default)")
    parser.add_argument("--bench", action="store_true", help="also decode at the real 1B shape and measure tok/s")
    parser.add_argument("--dtype", default=None, help="dtype for --bench (default: bfloat16 where the device "
                                                      "computes in it, else float16 on GPUs, float32 on CPU)")
    parser.add_argument("--verbose", action="store_true", help="also show third-party warnings and our debug lines")
    parser.add_argument("--tensor-parallel-worker", metavar="FOLDER", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    if args.tensor_parallel_worker:
        return tensor_parallel_worker(args.tensor_parallel_worker)
    import paddle

    # The int8 row says once per structure that CPU int8 decodes slower; that is known here.
    logging.getLogger("paddlemix.models.internvl2.quant").setLevel(logging.ERROR)

    if args.device:
        paddle.set_device(args.device)
    kind = device_kind(paddle.device.get_device())
    dtypes = low_precision_dtypes(kind)
    for line in environment_lines(kind):
        print(line)
    print("path checks (against the plain float32 ops on the same random weights):")
    failures = 0
    for structure in STRUCTURES:
        for row in check_rows(structure, kind, dtypes):
            print(format_row(structure, row))
            failures += 0 if row[-1] else 1
    row = tensor_parallel_row(kind)
    if row is not None:
        print(format_row(TENSOR_PARALLEL_STRUCTURE, row))
        failures += 0 if row[-1] else 1
    if args.bench:
        for line in bench_lines(kind, args.dtype or (dtypes[0] if dtypes else "float32")):
            print(line)
    if failures:
        print(f"verdict: FAIL, {failures} path(s) disagree with the plain float32 ops beyond their tolerance; "
              "please send this whole output with your bug report")
        sys.exit(1)
    print("verdict: ok, every path this device takes agrees with the plain float32 ops")


if __name__ == "__main__":
    run_main(main)
