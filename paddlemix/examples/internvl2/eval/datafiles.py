"""Finding and reading benchmark files laid out as in the official evaluation-data guide.

Paths in the official files (``data/textvqa/...`` and the image paths inside the jsonl files)
are relative to the folder the official scripts run from; here that folder is ``--data-root``.
"""
import json
import logging
import os
from typing import Dict, List, Sequence

logger = logging.getLogger(__name__)


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


def write_jsonl(path: str, rows) -> None:
    """One JSON object per line, written through a temporary name like ``write_json``."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(tmp, path)


def read_keyed(paths: Sequence[str], field: str) -> Dict[str, object]:
    """``{key: row[field]}`` over JSONL logs of ``{"key": ..., field: ...}`` rows; the first row of a key wins.

    A last line without its newline is torn (being written, or cut by a crash) and ignored; the
    file is read as bytes because such a line may also end inside a multi-byte character.
    """
    values = {}
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        lines = data[:data.rfind(b"\n") + 1].split(b"\n")[:-1]
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except ValueError as error:  # bad JSON or bad UTF-8
                raise DatasetError(f"{path}:{number} is corrupt ({error}); delete the line or the file "
                                   f"to redo those questions") from error
            values.setdefault(row["key"], row[field])
    return values


def drop_torn_tail(path: str) -> None:
    """Cut a torn last line off a log this process appends to, so new rows start on a fresh line."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
            logger.warning("%s: dropped a torn last line (an interrupted write)", path)
