"""The release's published scores: the README table, the lookup by checkpoint name, and a run that shows them."""
import json
import os
import re

from paddlemix.examples.internvl2.eval import evaluate
from paddlemix.examples.internvl2.eval.published import PUBLISHED, SIZES, published_scores, released_size
from paddlemix.examples.internvl2.eval.tasks import DATASETS
from reference import REPO_ROOT
from test_eval_mmvp_seed import make_mmvp

README = REPO_ROOT / "paddlemix" / "examples" / "internvl2" / "eval" / "README.md"


def readme_rows():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Published results to compare with"):text.index("## Data layout")]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 1 + len(SIZES) and cells[0].startswith("`"):
            rows[cells[0]] = tuple(None if cell == "–" else float(cell) for cell in cells[1:])
    return rows


def test_the_readme_table_is_the_lookup_table():
    rows = readme_rows()
    for row in PUBLISHED:
        assert rows.pop(row.label) == row.values, row.label
        assert row.dataset in DATASETS
    assert list(rows) == ["`scienceqa`, `vqa-vqav2-*`, `vqa-ocrvqa-*`, `mmbench-dev-*`"]  # nothing published
    assert rows.popitem()[1] == (None,) * len(SIZES)


def test_released_checkpoints_by_name():
    assert released_size("OpenGVLab/InternVL2-8B") == "8B"
    assert released_size("/models/internvl2-1b/") == "1B"
    assert released_size("OpenGVLab/InternVL2-Llama3-76B") == "76B"
    for other in ("./InternVL2-8B-finetuned", "OpenGVLab/InternVL2_5-8B", "InternVL2-76B", "my-model"):
        assert released_size(other) is None, other
    assert published_scores("OpenGVLab/InternVL2-1B", "vqa-textvqa-val") == {"accuracy": 0.7052}
    assert published_scores("InternVL2-2B", "mmmu-val") == {"overall.acc": 0.343}
    assert published_scores("InternVL2-Llama3-76B", "mme") == {"Perception": 1731.1, "Cognition": 683.6}
    assert published_scores("InternVL2-1B", "scienceqa") == {}
    assert published_scores("finetuned", "mme") == {}


def test_a_run_of_a_released_checkpoint_shows_the_published_score(tiny_1b, tmp_path, capsys):
    released = tmp_path / "InternVL2-1B"  # the tiny checkpoint under the released model's name
    os.symlink(tiny_1b, released)
    make_mmvp(tmp_path)
    results = evaluate.main([str(released), "mmvp", "--data-root", str(tmp_path), "--out-dir", str(tmp_path / "out"),
                             "--max-new-tokens", "2"])
    assert results["published"]["model"] == "InternVL2-1B" and results["published"]["metrics"] == {"accuracy": 0.2}
    saved = json.loads((tmp_path / "out" / "InternVL2-1B" / "mmvp" / "results.json").read_text(encoding="utf-8"))
    assert saved["published"] == results["published"]
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"dataset\s+metric\s+value\s+published", lines[0])
    assert re.fullmatch(rf"mmvp\s+accuracy\s+{results['metrics']['accuracy']:.4f}\s+0\.2000", lines[1])


def test_the_summary_of_a_test_split_names_the_server_score(capsys):
    evaluate.print_summary("mmbench-test-en", {"submission": "x.xlsx"}, "results.json", {"server": 65.4})
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"mmbench-test-en\s+server\s+-\s+65\.4000", lines[2])
