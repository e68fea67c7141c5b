"""``tools/benchmark.py --quick`` runs both workers end to end and reports every figure for both sides.

Nothing about speed is asserted: the numbers depend on the machine and on what else runs on it. The
target checks are asserted to be computed right, whatever their outcome.
"""

import json
import operator
import subprocess
import sys

from reference import REPO_ROOT, require_asset, require_reference_python

FIGURES = (
    "read_s", "load_s", "load_over_read", "peak_rss_bytes", "weight_bytes", "vit_ms_per_tile", "vit_cores",
    "prefill_ms", "decode_tps", "decode_cores", "batch_tps", "batch_gain", "dram_bps", "llm_bytes_per_token",
    "ceiling_tps", "ceiling_pct", "resident_weight_bytes", "int8_decode_tps",
)

# The performance issue's targets: name -> (value from the JSON figures, comparison, threshold).
TARGETS = {
    "from_pretrained vs file read": (lambda f: f["load_s"]["paddle"] / f["read_s"]["paddle"], "<=", 1.5),
    "peak RSS vs fp32 weights": (lambda f: f["peak_rss_bytes"]["paddle"] / f["weight_bytes"]["paddle"], "<=", 0.65),
    "decode vs reference": (lambda f: f["decode_tps"]["ratio"], ">=", 1.6),
    "decode vs DRAM ceiling": (lambda f: f["ceiling_pct"]["paddle"], ">=", 80.0),
    "batch 8 decode vs reference": (lambda f: f["batch_tps"]["paddle"] / f["batch_tps"]["torch"], ">=", 2.0),
    "InternViT vs reference": (lambda f: f["vit_ms_per_tile"]["torch"] / f["vit_ms_per_tile"]["paddle"], ">=", 1.0),
    "time to first token vs reference": (lambda f: f["prefill_ms"]["paddle"] / f["prefill_ms"]["torch"], "<=", 1.0),
    "int8 decode vs reference fp32": (lambda f: f["int8_decode_tps"]["paddle"] / f["decode_tps"]["torch"], ">=", 2.5),
}
COMPARISONS = {">=": operator.ge, "<=": operator.le}


def test_quick_benchmark_reports_every_figure_for_both_sides(tmp_path):
    require_asset("tokenizers", "internvl2-1b", "config.json")
    ref_python = require_reference_python()
    out = tmp_path / "out.json"
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "benchmark.py"), "--quick", "--json", str(out),
           "--workdir", str(tmp_path / "work"), "--ref-python", ref_python]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio" in proc.stdout  # the table was printed

    report = json.loads(out.read_text())
    figures = report["figures"]
    assert sorted(figures) == sorted(FIGURES)
    for key in FIGURES:
        for side in ("paddle", "torch", "ratio"):
            value = figures[key][side]
            assert isinstance(value, float) and value > 0, f"{key} {side} = {value!r}"
    # Both sides load the same weights, so they count the same fp32 bytes; Paddle keeps the LLM's in bf16.
    assert figures["weight_bytes"]["paddle"] == figures["weight_bytes"]["torch"]
    assert figures["resident_weight_bytes"]["torch"] == figures["weight_bytes"]["torch"]
    assert figures["llm_bytes_per_token"]["paddle"] < 0.6 * figures["llm_bytes_per_token"]["torch"]

    targets = {t["name"]: t for t in report["targets"]}
    assert sorted(targets) == sorted(TARGETS)
    for name, (value_of, comparison, threshold) in TARGETS.items():
        target = targets[name]
        assert isinstance(target["value"], float) and isinstance(target["threshold"], float), target
        assert isinstance(target["met"], bool), target
        assert (target["comparison"], target["threshold"]) == (comparison, threshold), target
        value = value_of(figures)
        assert abs(target["value"] - value) <= 1e-9 * abs(value), (target, value)
        assert target["met"] == COMPARISONS[comparison](value, threshold), (target, value)
        assert f"{'meets ' if target['met'] else 'MISSES'} {name}: " in proc.stdout
