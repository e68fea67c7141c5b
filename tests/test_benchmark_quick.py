"""``tools/benchmark.py --quick`` runs both workers end to end and reports every figure for both sides.

Nothing about speed is asserted: the numbers depend on the machine and on what else runs on it.
"""

import json
import subprocess
import sys

from reference import REPO_ROOT, require_asset, require_reference_python

FIGURES = (
    "read_s", "load_s", "load_over_read", "peak_rss_bytes", "weight_bytes", "vit_ms_per_tile", "vit_cores",
    "prefill_ms", "decode_tps", "decode_cores", "batch_tps", "batch_gain", "dram_bps", "llm_bytes_per_token",
    "ceiling_tps", "ceiling_pct",
)


def test_quick_benchmark_reports_every_figure_for_both_sides(tmp_path):
    require_asset("tokenizers", "internvl2-1b", "config.json")
    ref_python = require_reference_python()
    out = tmp_path / "out.json"
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "benchmark.py"), "--quick", "--json", str(out),
           "--workdir", str(tmp_path / "work"), "--ref-python", ref_python]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio" in proc.stdout  # the table was printed

    figures = json.loads(out.read_text())["figures"]
    assert sorted(figures) == sorted(FIGURES)
    for key in FIGURES:
        for side in ("paddle", "torch", "ratio"):
            value = figures[key][side]
            assert isinstance(value, float) and value > 0, f"{key} {side} = {value!r}"
    # Both sides load the same weights, so they must count the same bytes.
    assert figures["weight_bytes"]["paddle"] == figures["weight_bytes"]["torch"]
    assert figures["llm_bytes_per_token"]["paddle"] == figures["llm_bytes_per_token"]["torch"]
