"""Finding and reading benchmark files laid out as in the official evaluation-data guide.

Paths in the official files (``data/textvqa/...`` and the image paths inside the jsonl files)
are relative to the folder the official scripts run from; here that folder is ``--data-root``.
"""
import json
import os
from typing import List


class DatasetError(FileNotFoundError):
    """A benchmark file or folder is missing or unreadable; the message names it and the expected layout."""


def resolve(root: str, path: str) -> str:
    """``path`` as given when absolute, else under ``root``."""
    return path if os.path.isabs(path) else os.path.join(root, path)


def require(root: str, relpath: str, dataset: str, layout: str) -> str:
    """Absolute path of ``relpath`` under ``root``; a one-line DatasetError when it does not exist."""
    path = resolve(root, relpath)
    if not os.path.exists(path):
        kind = "folder" if not os.path.splitext(relpath)[1] else "file"
        raise DatasetError(f"{dataset}: missing {kind} {relpath} under data root {os.path.abspath(root)}; "
                           f"expected layout: {layout} (see paddlemix/examples/internvl2/eval/README.md)")
    return path


def read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON ({error})") from error


def read_jsonl(path: str) -> List[dict]:
    """One JSON object per non-empty line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DatasetError(f"{path}:{number} is not valid JSON ({error})") from error
    return rows


def write_json(path: str, obj) -> None:
    """Write through a temporary name and rename, so a reader never sees a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, path)
