"""Turn a local path or a hub model id into a local checkpoint directory.

Hub downloads show their own tqdm progress. The source is chosen with
`download_source=` or the `DOWNLOAD_SOURCE` environment variable that
paddleformers also reads: huggingface (default), aistudio or modelscope.
"""
import logging
import os
import re

logger = logging.getLogger(__name__)

SOURCES = ("huggingface", "aistudio", "modelscope")
# Only what from_pretrained and load_tokenizer read; skips the PyTorch .bin copies some repos carry.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py"]
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class HubError(OSError):
    """A model that is neither a local directory nor downloadable."""


def resolve_model_dir(path_or_id, download_source=None, revision=None):
    """A local directory holding config.json, downloading `path_or_id` first when it is a hub id."""
    path = os.path.expanduser(str(path_or_id))
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise HubError(f"'{path_or_id}' is a file; pass the checkpoint directory that holds config.json")
    if not _REPO_ID.match(str(path_or_id)) or str(path_or_id).startswith((".", "/", "~")):
        raise HubError(f"'{path_or_id}' is not a local directory and not a hub model id like 'OpenGVLab/InternVL2-1B'")
    source = (download_source or os.environ.get("DOWNLOAD_SOURCE") or "huggingface").lower()
    if source not in SOURCES:
        raise HubError(f"unknown download source {source!r}; choose one of {', '.join(SOURCES)}")
    logger.info("Downloading %s from %s", path_or_id, source)
    try:
        return _download(source, str(path_or_id), revision)
    except (OSError, ValueError, RuntimeError) as err:
        raise HubError(
            f"could not download '{path_or_id}' from {source} ({_first_line(err)}); check the network and the "
            f"model id, or download the checkpoint yourself and pass its local directory instead") from err


def _download(source, repo_id, revision):
    if source == "huggingface":
        from huggingface_hub import snapshot_download
        return snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS)
    if source == "modelscope":
        from modelscope.hub.snapshot_download import snapshot_download
        return snapshot_download(model_id=repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS)
    from aistudio_sdk.snapshot_download import snapshot_download
    return snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS)


def _first_line(err):
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
