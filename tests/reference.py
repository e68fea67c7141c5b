"""Helpers for parity tests: shared assets, the tools/ scripts and the PyTorch reference subprocess.

The reference (``tools/torch_reference.py``) needs torch and transformers, which the project
environment must not have, so it runs under a separate interpreter: ``$PADDLEMIX_REF_PYTHON``,
else ``<repo>/.venv-ref/bin/python``. Tests that need it skip when it is absent, unless
``PADDLEMIX_REQUIRE_REF=1`` makes that a failure (for CI, where it must be installed).
"""

import importlib.util
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = REPO_ROOT.parent / "shared" / "assets"
REFERENCE_SCRIPT = REPO_ROOT / "tools" / "torch_reference.py"


def require_asset(*parts):
    """Path of a real upstream asset under ``../shared/assets``; skips the test when it is absent."""
    path = ASSETS_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real asset {path} is absent (the shared/ folder is not next to the repository)")
    return path


def load_tool(name):
    """Import ``tools/<name>.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reference_python_path():
    return os.environ.get("PADDLEMIX_REF_PYTHON") or str(REPO_ROOT / ".venv-ref" / "bin" / "python")


def reference_python():
    """The reference interpreter's path, or None when it does not exist."""
    path = _reference_python_path()
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def require_reference_python():
    """The reference interpreter; skips (or fails under PADDLEMIX_REQUIRE_REF=1) when it is missing."""
    python = reference_python()
    if python is None:
        reason = (
            f"reference python '{_reference_python_path()}' (torch + transformers) not found: "
            "set PADDLEMIX_REF_PYTHON or run `make reference`"
        )
        if os.environ.get("PADDLEMIX_REQUIRE_REF") == "1":
            pytest.fail(reason + " (PADDLEMIX_REQUIRE_REF=1)")
        pytest.skip(reason)
    return python


def run_reference(mode, ckpt, inputs, timeout=900):
    """Run ``tools/torch_reference.py MODE`` on checkpoint folder ``ckpt``; returns its outputs.

    ``inputs`` maps names to arrays or scalars (see the script's docstring for each mode).
    """
    return run_reference_batch([(mode, ckpt, inputs)], timeout)[0]


def run_reference_batch(jobs, timeout=900):
    """Several ``(mode, ckpt, inputs)`` reference runs in one subprocess; their outputs, in order.

    Importing torch and transformers takes seconds, so tests gather their reference work.
    """
    python = require_reference_python()
    with tempfile.TemporaryDirectory(prefix="torch_ref_") as tmp:
        specs = []
        for index, (mode, ckpt, inputs) in enumerate(jobs):
            in_path, out_path = os.path.join(tmp, f"inputs{index}.npz"), os.path.join(tmp, f"outputs{index}.npz")
            np.savez(in_path, **{k: np.asarray(v) for k, v in inputs.items()})
            specs.append({"mode": mode, "ckpt": str(ckpt), "inputs": in_path, "out": out_path})
        jobs_path = os.path.join(tmp, "jobs.json")
        with open(jobs_path, "w", encoding="utf-8") as f:
            json.dump(specs, f)
        cmd = [python, str(REFERENCE_SCRIPT), "batch", "--jobs", jobs_path]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            modes = ", ".join(spec["mode"] for spec in specs)
            raise RuntimeError(
                f"torch reference ({modes}) failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}"
            )
        outputs = []
        for spec in specs:
            with np.load(spec["out"]) as data:
                outputs.append({k: data[k] for k in data.files})
        return outputs
