"""The quick-start notebook runs cell by cell in a Jupyter kernel against a tiny checkpoint."""
import pytest

from reference import REPO_ROOT, load_tool, require_asset

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = REPO_ROOT / "paddlemix" / "examples" / "internvl2" / "quickstart.ipynb"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = require_asset("tokenizers", "internvl2-1b")
    out = tmp_path_factory.mktemp("tiny-notebook")
    load_tool("make_tiny_checkpoint").make_tiny_checkpoint(str(folder / "config.json"), str(folder), str(out))
    return str(out)


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_every_cell_runs(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERNVL_MODEL_PATH", tiny)
    monkeypatch.setenv("INTERNVL_MAX_NEW_TOKENS", "6")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, if one fails
    outputs = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for output in cell.outputs)
    for usage in ("Hello, who are you?", "Please write a poem", "Image-1: <image>", "Frame8: <image>",
                  "beam search:"):
        assert usage in outputs
