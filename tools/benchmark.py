"""CPU benchmark of the Paddle InternVL2 port side by side with the transformers (PyTorch) reference.

Both sides load the same random-weight checkpoint at the real InternVL2-1B shape (bf16 safetensors,
loaded as an fp32 model; ``--quick``: a tiny shape) and measure the same figures with the same
thread count. Each side runs in its own worker process, one after the other, so neither sees the
other's memory, threads or warm caches; a worker writes its raw numbers to a JSON file this
parent reads, and the parent derives the ratios and prints the table, each figure's target from the
performance issue (see ``TARGETS``) beside it, and then whether each target is met.

    python tools/benchmark.py [--quick] [--threads N] [--json OUT.json] [--workdir DIR]

Method, the same on both sides:

* read: every byte of the side's checkpoint files with 64 MiB reads (the page cache is left as it
  is; the parent reads all files once first, so both sides start warm).
* load: wall time of ``from_pretrained(dir, fp32)``. transformers cannot read InternVL's original
  names, so its worker loads a one-time, cached conversion of the same weights to its own layout
  (same bytes, bf16) with ``InternVLForConditionalGeneration.from_pretrained``.
* peak RSS: the worker's own high-water mark (``VmHWM``) after loading, the ViT and the chats (before int8), against the
  fp32 bytes of all weights. Not right after loading: weights used from a memory map of the files
  come into memory when first used.
* int8: Paddle only, after the rest: ``from_pretrained(quant="weight_only_int8")`` and the batch-1
  decode again; the reference's row shows its fp32 decode.
* ViT: image features (InternViT, pixel shuffle, mlp1) of a batch of 448px tiles; warm-up, median.
* prefill and decode: ``generate`` (greedy, KV cache) on a prompt of one tile plus a 32-token
  question, asking for 33 new tokens (9 with ``--quick``). Both sides run without an eos token
  (transformers: eos cleared from the model's generation config), so both emit exactly that many.
  A hook on the LLM forward stamps when the first logits exist: prefill = call start -> first
  logits (time to first token); decode tokens/s = the other 32 tokens / (first logits -> return),
  so prefill is excluded. Warm-up, then median.
* batch 8: the same with 8 left-padded text prompts of 25-32 tokens (``batch_chat`` style);
  aggregate new tokens/s of the whole batch.
* DRAM ceiling: decoding one token reads every LLM decoder weight, the final norm and lm_head
  as each side holds them (this port: bf16 from a bf16 checkpoint); that byte count / the
  machine's read bandwidth bounds batch-1 decode tokens/s. The
  bandwidth is measured once per run by the parent, just before the workers, so both sides are
  held to the same number: one float32 matrix-vector product per thread over its slice of a 1 GiB
  matrix, best of 5. A GEMV streams its matrix once, as decoding does, and reaches more of the
  bandwidth than a numpy sum or max, which are bound by arithmetic on one core.

Targets (the CPU-engine issue's, set for the InternVL2-1B shape; with ``--quick`` only indicative):
load <= 1.5x the file read; peak RSS <= 0.65x the fp32 weight bytes; decode tokens/s >= 1.6x the
reference and >= 80% of the DRAM ceiling for the bytes this port reads per token; batch-8 decode
>= 2x the reference; InternViT >= 1.0x the reference; time to first token <= 1.0x the reference's;
weight-only int8 decode >= 2.5x the reference's fp32 decode (the reference has no CPU int8 path).
All of them are checked on Paddle's figures.

The table's header says how many cores other processes kept busy while the workers ran (from
/proc/stat): on a 2-core machine any competitor skews the figures of either side badly.

Paddle runs eagerly, computing in fp32: MKL sgemm for the large products, this project's C++
kernels (paddlemix/models/internvl2/csrc) for the bf16-weight products of decoding, the attention
softmax and GELU; transformers runs with SDPA attention, its fastest CPU path.

Worker mode (internal): ``benchmark.py --paddle-worker SPEC.json OUT.json``. The torch worker is
``tools/torch_bench_worker.py``; it imports the shared measuring code from this file, so this
module must import nothing but the standard library and numpy at top level.
"""

import argparse
import collections
import json
import logging
import operator
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

# numpy's BLAS must stay single-threaded: the DRAM test runs one GEMV per thread itself, and idle
# OpenBLAS threads spinning beside them would halve what it measures.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

logger = logging.getLogger("benchmark")

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TOOLS_DIR)
DEFAULT_TOKENIZER = os.path.join(REPO_ROOT, "..", "shared", "assets", "tokenizers", "internvl2-1b")
TORCH_WORKER = os.path.join(TOOLS_DIR, "torch_bench_worker.py")
READ_CHUNK = 64 << 20
SEED = 0

# Per mode: checkpoint shard size, DRAM test array size, and the worker settings. --quick shrinks
# the model and the work, not the method.
MODES = {
    "full": (1 << 30, 1 << 30, {"vit_tiles": 4, "runs": 3, "new_tokens": 32}),
    "quick": (8 << 20, 128 << 20, {"vit_tiles": 2, "runs": 2, "new_tokens": 8}),
}
QUESTION_TOKENS = 32
BATCH = 8

# (key, label, unit, scale, better): `scale` converts the raw value to `unit`; `better` orients
# the ratio column so that > 1 always means Paddle is better.
FIGURES = [
    ("read_s", "read checkpoint files", "s", 1, "lower"),
    ("load_s", "from_pretrained, bf16 -> fp32", "s", 1, "lower"),
    ("load_over_read", "load / read", "x", 1, "lower"),
    ("peak_rss_bytes", "peak RSS (load, ViT, chat)", "GB", 1e-9, "lower"),
    ("weight_bytes", "fp32 weights", "GB", 1e-9, "lower"),
    ("resident_weight_bytes", "weights as held in memory", "GB", 1e-9, "lower"),
    ("vit_ms_per_tile", "InternViT per 448px tile", "ms", 1, "lower"),
    ("vit_cores", "CPU cores busy in ViT", "cores", 1, "higher"),
    ("prefill_ms", "prefill = TTFT (1 tile + 32 tokens)", "ms", 1, "lower"),
    ("decode_tps", "decode, batch 1", "tok/s", 1, "higher"),
    ("decode_cores", "CPU cores busy in decode", "cores", 1, "higher"),
    ("batch_tps", "decode, batch 8 aggregate", "tok/s", 1, "higher"),
    ("batch_gain", "batch 8 / batch 1", "x", 1, "higher"),
    ("dram_bps", "DRAM read bandwidth", "GB/s", 1e-9, "higher"),
    ("llm_bytes_per_token", "LLM weight bytes read per token", "GB", 1e-9, "lower"),
    ("ceiling_tps", "DRAM ceiling, batch 1", "tok/s", 1, "higher"),
    ("ceiling_pct", "decode as % of ceiling", "%", 1, "higher"),
    ("int8_decode_tps", "decode, batch 1, int8 (torch: fp32)", "tok/s", 1, "higher"),
]

# The performance issue's targets: (name, key of the row that shows it, what is compared,
# comparison, threshold, unit, value from the combined table).
TARGETS = [
    ("from_pretrained vs file read", "load_over_read", "paddle", "<=", 1.5, "x",
     lambda f: f["load_over_read"]["paddle"]),
    ("peak RSS vs fp32 weights", "peak_rss_bytes", "paddle / fp32 weights", "<=", 0.65, "x",
     lambda f: f["peak_rss_bytes"]["paddle"] / f["weight_bytes"]["paddle"]),
    ("decode vs reference", "decode_tps", "ratio", ">=", 1.6, "x", lambda f: f["decode_tps"]["ratio"]),
    ("decode vs DRAM ceiling", "ceiling_pct", "paddle", ">=", 80, "%", lambda f: f["ceiling_pct"]["paddle"]),
    ("batch 8 decode vs reference", "batch_tps", "ratio", ">=", 2, "x", lambda f: f["batch_tps"]["ratio"]),
    ("InternViT vs reference", "vit_ms_per_tile", "ratio", ">=", 1.0, "x", lambda f: f["vit_ms_per_tile"]["ratio"]),
    ("time to first token vs reference", "prefill_ms", "paddle / torch", "<=", 1.0, "x",
     lambda f: f["prefill_ms"]["paddle"] / f["prefill_ms"]["torch"]),
    ("int8 decode vs reference fp32", "int8_decode_tps", "ratio", ">=", 2.5, "x",
     lambda f: f["int8_decode_tps"]["ratio"]),
]
COMPARISONS = {">=": operator.ge, "<=": operator.le}


# --------------------------------------------------------------- shared measuring code (both workers)


def setup_logging(name):
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name}: %(message)s", datefmt="%H:%M:%S")


def checkpoint_files(folder):
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors"))


def read_seconds(paths):
    """Seconds to read every byte of ``paths`` into one reused buffer (no parsing, no copies kept)."""
    buffer = memoryview(bytearray(READ_CHUNK))
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass
    return time.perf_counter() - start


def peak_rss_bytes():
    """This worker's own peak RSS (memory.peak_host_rss_bytes; the torch worker cannot import paddlemix).
    Not ru_maxrss: it inherits this parent's high-water mark (the 1 GiB bandwidth matrix, a checkpoint build)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def dram_read_bandwidth(nbytes, threads, repeats=5, width=1024):
    """Bytes/s of matrix-vector products over a float32 matrix far larger than the caches, a slice per thread."""
    matrix = np.ones((nbytes // 4 // width, width), dtype=np.float32)
    slices = np.array_split(matrix, threads)
    vector = np.ones(width, dtype=np.float32)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:  # BLAS calls release the GIL
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(vector.__rmatmul__, slices))
            best = min(best, time.perf_counter() - start)
    return matrix.nbytes / best


def make_pixels(tiles, size, seed=SEED):
    """The same random tiles in both workers (PCG64 streams are stable across numpy versions)."""
    return np.random.default_rng(seed).standard_normal((tiles, 3, size, size), dtype=np.float32)


def timed(fn, runs, warmup=1):
    """(median seconds, CPU cores busy on average) of ``fn()`` over ``runs`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)


def generation_figures(side, input_ids, attention_mask, pixels, new_tokens, runs):
    """Median (prefill seconds, aggregate decode tokens/s, CPU cores busy in decode) of greedy generate runs.

    ``side.generate`` must produce exactly ``new_tokens + 1`` tokens per row, calling the callback
    given to ``side.on_logits`` once per LLM forward; the first call marks the end of prefill.
    """
    stamps = []
    side.on_logits(lambda: stamps.append((time.perf_counter(), time.process_time())))
    prefill, rates, cores = [], [], []
    for run in range(runs + 1):  # run 0 is the warm-up
        stamps.clear()
        start = time.perf_counter()
        produced = side.generate(input_ids, attention_mask, pixels, new_tokens + 1)
        end, cpu_end = time.perf_counter(), time.process_time()
        if produced != new_tokens + 1 or len(stamps) != new_tokens + 1:
            raise RuntimeError(f"{side.name}: expected {new_tokens + 1} tokens and as many LLM forwards, "
                               f"got {produced} tokens and {len(stamps)} forwards")
        if run:
            first, cpu_first = stamps[0]
            prefill.append(first - start)
            rates.append(input_ids.shape[0] * new_tokens / (end - first))
            cores.append((cpu_end - cpu_first) / (end - first))
    return statistics.median(prefill), statistics.median(rates), statistics.median(cores)


def run_worker(side, spec, out_path):
    """Measure every raw figure for one side (see the module docstring) and write them as JSON."""
    runs, tiles = spec["runs"], spec["vit_tiles"]
    results = {"read_s": read_seconds(side.files)}
    logger.info("read %d files in %.2f s; loading", len(side.files), results["read_s"])
    start = time.perf_counter()
    side.load()
    results["load_s"] = time.perf_counter() - start
    results["weight_bytes"], results["resident_weight_bytes"], results["llm_bytes_per_token"] = side.weight_bytes()
    logger.info("loaded in %.2f s, peak RSS %.2f GB", results["load_s"], peak_rss_bytes() / 1e9)

    pixels = make_pixels(tiles, spec["image_size"])
    seconds, results["vit_cores"] = timed(lambda: side.vit(pixels), runs)
    results["vit_ms_per_tile"] = seconds * 1e3 / tiles
    logger.info("ViT: %.0f ms per tile; prefill and decode", results["vit_ms_per_tile"])

    prompt = np.asarray([spec["prompt_ids"]], dtype=np.int64)
    prefill, results["decode_tps"], results["decode_cores"] = generation_figures(
        side, prompt, np.ones_like(prompt), pixels[:1], spec["new_tokens"], runs)
    results["prefill_ms"] = prefill * 1e3
    logger.info("prefill %.0f ms, decode %.2f tok/s; batch of %d", results["prefill_ms"], results["decode_tps"],
                len(spec["batch_ids"]))

    batch_ids = np.asarray(spec["batch_ids"], dtype=np.int64)
    batch_mask = np.asarray(spec["batch_mask"], dtype=np.int64)
    _, results["batch_tps"], _ = generation_figures(side, batch_ids, batch_mask, None, spec["new_tokens"], runs)
    logger.info("batch decode %.2f tok/s", results["batch_tps"])
    results["peak_rss_bytes"] = peak_rss_bytes()
    if hasattr(side, "load_int8"):  # the reference has no CPU int8 path: it is compared in fp32
        side.load_int8()
        _, results["int8_decode_tps"], _ = generation_figures(
            side, prompt, np.ones_like(prompt), pixels[:1], spec["new_tokens"], runs)
        logger.info("int8 decode %.2f tok/s", results["int8_decode_tps"])
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(results, f)


# --------------------------------------------------------------- Paddle worker


class PaddleSide:
    """The Paddle port through its public API: from_pretrained, extract_feature, generate."""

    name = "paddle"

    def __init__(self, spec):
        import paddlemix  # noqa: F401  (sets OMP_NUM_THREADS before paddle is imported)
        import paddle
        from paddlemix.models.internvl2.modeling import InternVLChatModel

        self.paddle, self.model_class = paddle, InternVLChatModel
        self.spec = spec
        self.files = checkpoint_files(spec["checkpoint"])
        self.model = None
        self._hook = None

    def load(self):
        self.model = self.model_class.from_pretrained(self.spec["checkpoint"], dtype="float32")
        self.model.img_context_token_id = self.spec["image_token_id"]

    def load_int8(self):
        self.model = None
        self.model = self.model_class.from_pretrained(self.spec["checkpoint"], dtype="float32",
                                                      quant="weight_only_int8")
        self.model.img_context_token_id = self.spec["image_token_id"]

    def weight_bytes(self):
        """(fp32 bytes of every weight, bytes as held, bytes of the LLM weights one decoded token reads)."""
        def size(tensors, fp32=False):
            return sum(int(np.prod(t.shape)) * (4 if fp32 else t.element_size()) for t in tensors)

        llm = self.model.language_model
        decoder = list(llm.layers.parameters()) + list(llm.layers.buffers())  # int8 weights are buffers
        per_token = size(decoder) + size(llm.norm.parameters()) + size(llm.lm_head.parameters())
        return size(self.model.parameters(), fp32=True), size(self.model.parameters()), per_token

    def vit(self, pixels):
        with self.paddle.no_grad():
            self.model.extract_feature(self.paddle.to_tensor(pixels))

    def on_logits(self, callback):
        if self._hook is not None:
            self._hook.remove()
        self._hook = self.model.language_model.register_forward_post_hook(lambda *_: callback())

    def generate(self, input_ids, attention_mask, pixels, max_new_tokens):
        out = self.model.generate(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask,
                                  max_new_tokens=max_new_tokens, do_sample=False)
        return out.shape[1]


def paddle_worker(spec_path, out_path):
    setup_logging("paddle")
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    sys.path.insert(0, REPO_ROOT)
    run_worker(PaddleSide(spec), spec, out_path)


# --------------------------------------------------------------- parent


def real_sizes(config):
    """make_tiny_checkpoint size arguments that reproduce ``config``'s real shape."""
    vision, llm = config["vision_config"], config["llm_config"]
    return {
        "vision_hidden": vision["hidden_size"],
        "vision_heads": vision["num_attention_heads"],
        "vision_intermediate": vision["intermediate_size"],
        "vision_layers": vision["num_hidden_layers"],
        "llm_hidden": llm["hidden_size"],
        "llm_heads": llm["num_attention_heads"],
        "llm_kv_heads": llm.get("num_key_value_heads", llm["num_attention_heads"]),
        "llm_intermediate": llm["intermediate_size"],
        "llm_layers": llm["num_hidden_layers"],
    }


def ensure_checkpoint(folder, tokenizer_dir, quick, shard_bytes):
    """Build (once; reused while its recipe is unchanged) the random bf16 checkpoint in ``folder``/original."""
    config_path = os.path.join(tokenizer_dir, "config.json")
    with open(config_path, encoding="utf-8") as f:
        real_config = json.load(f)
    sizes = {} if quick else real_sizes(real_config)
    recipe = {"config": real_config, "sizes": sizes, "seed": SEED, "dtype": "bfloat16", "shard_bytes": shard_bytes}
    original, marker = os.path.join(folder, "original"), os.path.join(folder, "recipe.json")
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            if json.load(f) == recipe:
                logger.info("reusing checkpoint %s", original)
                return original
    shutil.rmtree(folder, ignore_errors=True)  # also drops the transformers conversion of old weights
    from make_tiny_checkpoint import make_tiny_checkpoint

    logger.info("building a random %s-shape bf16 checkpoint in %s", "tiny" if quick else "real", original)
    make_tiny_checkpoint(config_path, tokenizer_dir, original, seed=SEED, dtype="bfloat16",
                         shard_bytes=shard_bytes, **sizes)
    with open(marker, "w", encoding="utf-8") as f:
        json.dump(recipe, f)
    return original


def model_inputs(checkpoint):
    """Image size and token ids: a 1-tile image prompt with a question, and a left-padded text batch."""
    with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    with open(os.path.join(checkpoint, "added_tokens.json"), encoding="utf-8") as f:
        special = json.load(f)
    vision = config["vision_config"]
    image_size = config.get("force_image_size") or vision["image_size"]
    num_image_token = int((image_size // vision["patch_size"]) ** 2 * config["downsample_ratio"] ** 2)
    rng = np.random.default_rng(SEED)
    first_special = min(special.values())  # ordinary tokens come before the special ones

    def text(n):
        return rng.integers(0, first_special, n).tolist()

    image = [special["<img>"]] + [special["<IMG_CONTEXT>"]] * num_image_token + [special["</img>"]]
    lengths = [QUESTION_TOKENS - i for i in range(BATCH)]
    longest = max(lengths)
    return {
        "image_size": image_size,
        "image_token_id": special["<IMG_CONTEXT>"],
        "prompt_ids": image + text(QUESTION_TOKENS),
        "batch_ids": [[0] * (longest - n) + text(n) for n in lengths],
        "batch_mask": [[0] * (longest - n) + [1] * n for n in lengths],
    }


def run_logged(name, cmd, env):
    """Run a worker, passing its log through; a failure becomes one line naming the worker."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    tail = collections.deque(maxlen=1)
    for line in proc.stderr:
        sys.stderr.write(line)
        if line.strip():
            tail.append(line.strip())
    if proc.wait():
        last = tail[0] if tail else "no output"
        raise SystemExit(f"error: {name} worker failed with exit code {proc.returncode}: {last}")


class OtherLoad:
    """CPU used by processes other than this one and its workers, from now on: contention that skews the figures."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]  # user .. steal
        machine_busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
        usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        ours = sum(u.ru_utime + u.ru_stime for u in usage)
        return time.perf_counter(), machine_busy - ours

    def cores(self):
        """Average number of cores the others kept busy."""
        (wall0, busy0), (wall1, busy1) = self.start, self._sample()
        return max(0.0, (busy1 - busy0) / (wall1 - wall0))


# The environment as the user started the benchmark: building a checkpoint imports paddlemix in this
# parent, which sets variables for its own process (MKL_DEBUG_CPU_TYPE on CPUs not made by Intel) that
# must not reach the reference's worker.
USER_ENVIRONMENT = dict(os.environ)


def worker_env(threads):
    return dict(USER_ENVIRONMENT, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def derive(raw, dram_bps):
    """Figures computed from a worker's raw numbers and the machine's read bandwidth."""
    figures = dict(raw, dram_bps=dram_bps)
    figures["load_over_read"] = raw["load_s"] / raw["read_s"]
    figures["batch_gain"] = raw["batch_tps"] / raw["decode_tps"]
    figures["ceiling_tps"] = dram_bps / raw["llm_bytes_per_token"]
    figures["ceiling_pct"] = 100 * raw["decode_tps"] / figures["ceiling_tps"]
    figures.setdefault("int8_decode_tps", raw["decode_tps"])  # the reference: its fp32 decode
    return figures


def combine(paddle, torch):
    table = {}
    for key, label, unit, scale, better in FIGURES:
        p, t = float(paddle[key] * scale), float(torch[key] * scale)
        ratio = p / t if better == "higher" else t / p
        table[key] = {"label": label, "unit": unit, "better": better, "paddle": p, "torch": t, "ratio": ratio}
    return table


def check_targets(table):
    """One dict per entry of ``TARGETS``: the value compared, the threshold and whether it is met."""
    checks = []
    for name, key, what, comparison, threshold, unit, value_of in TARGETS:
        value = float(value_of(table))
        checks.append({"name": name, "figure": key, "what": what, "value": value, "comparison": comparison,
                       "threshold": float(threshold), "unit": unit,
                       "met": bool(COMPARISONS[comparison](value, threshold))})
    return checks


def _number(value):
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def format_table(table, targets, meta):
    header = (f"{meta['shape']} shape, random bf16 checkpoint loaded as fp32, {meta['threads']} threads; "
              f"ViT batch of {meta['vit_tiles']} tiles; {meta['new_tokens']} decoded tokens after a "
              f"{meta['prompt_tokens']}-token prompt; medians of {meta['runs']} runs after a warm-up\n"
              f"other processes kept {meta['other_cores']:.2f} of {os.cpu_count()} cores busy on average while "
              f"the workers ran{' (figures are noisy)' if meta['other_cores'] > 0.1 else ''}\n"
              f"ratio: how many times better Paddle is (> 1: Paddle better, < 1: torch better)")
    goals = collections.defaultdict(list)
    for t in targets:
        goals[t["figure"]].append(f"{t['what']} {t['comparison']} {t['threshold']:g}{t['unit']}")
    rows = [("figure", "unit", "paddle", "torch ref", "ratio", "target")]
    for key, row in table.items():
        rows.append((row["label"], row["unit"], _number(row["paddle"]), _number(row["torch"]), f"{row['ratio']:.2f}",
                     "; ".join(goals[key])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if 2 <= i <= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             .rstrip() for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    verdicts = [f"{'meets ' if t['met'] else 'MISSES'} {t['name']}: {t['value']:.3g}{t['unit']} "
                f"(target {t['comparison']} {t['threshold']:g}{t['unit']})" for t in targets]
    return "\n".join([header, *lines, "", "targets (set for the InternVL2-1B shape):", *verdicts])


def default_ref_python():
    return os.environ.get("PADDLEMIX_REF_PYTHON") or os.path.join(REPO_ROOT, ".venv-ref", "bin", "python")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and fewer runs (for tests)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "paddlemix-bench"),
                        help="where the random checkpoints are cached")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="real InternVL2-1B config + tokenizer folder")
    parser.add_argument("--ref-python", default=default_ref_python(), help="interpreter with torch + transformers")
    parser.add_argument("--runs", type=int, help="timed runs per figure (median); default 3, 2 with --quick")
    parser.add_argument("--paddle-worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.paddle_worker:
        return paddle_worker(*args.paddle_worker)

    setup_logging("benchmark")
    if not os.path.isfile(args.ref_python):
        parser.error(f"reference python {args.ref_python} not found; set PADDLEMIX_REF_PYTHON or --ref-python")
    shard_bytes, dram_bytes, settings = MODES["quick" if args.quick else "full"]
    settings = dict(settings, runs=args.runs or settings["runs"], threads=args.threads)
    env = worker_env(args.threads)
    folder = os.path.join(args.workdir, "quick" if args.quick else "real")
    original = ensure_checkpoint(folder, args.tokenizer, args.quick, shard_bytes)
    converted = os.path.join(folder, "transformers")
    if not os.path.isfile(os.path.join(converted, "done")):
        logger.info("converting the checkpoint to the transformers layout (once)")
        cmd = [args.ref_python, TORCH_WORKER, "convert", original, converted, str(shard_bytes)]
        run_logged("torch convert", cmd, env)
    for path in checkpoint_files(original) + checkpoint_files(converted):
        read_seconds([path])  # warm the page cache the same way for both workers
    dram_bps = dram_read_bandwidth(dram_bytes, args.threads)
    logger.info("DRAM read bandwidth %.1f GB/s", dram_bps / 1e9)

    spec = dict(settings, **model_inputs(original))
    workers = {
        "paddle": (original, [sys.executable, os.path.abspath(__file__), "--paddle-worker"]),
        "torch": (converted, [args.ref_python, TORCH_WORKER, "measure"]),
    }
    raw = {}
    others = OtherLoad()
    with tempfile.TemporaryDirectory(prefix="paddlemix-bench-") as tmp:
        for name, (checkpoint, cmd) in workers.items():
            spec_path, out_path = os.path.join(tmp, f"{name}-spec.json"), os.path.join(tmp, f"{name}-out.json")
            with open(spec_path, "w", encoding="utf-8") as f:
                json.dump(dict(spec, checkpoint=checkpoint), f)
            logger.info("running the %s worker", name)
            run_logged(name, cmd + [spec_path, out_path], env)
            with open(out_path, encoding="utf-8") as f:
                raw[name] = derive(json.load(f), dram_bps)

    meta = dict(settings, shape="tiny" if args.quick else "InternVL2-1B", checkpoint=original,
                prompt_tokens=len(spec["prompt_ids"]), batch=BATCH, other_cores=others.cores())
    table = combine(raw["paddle"], raw["torch"])
    targets = check_targets(table)
    print(format_table(table, targets, meta))
    if args.json:
        partial = args.json + ".partial"  # renamed when complete: never a half-written result
        with open(partial, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "figures": table, "targets": targets}, f, indent=2)
        os.replace(partial, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
