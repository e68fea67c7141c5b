"""Numpy-only reading and writing of safetensors checkpoints in the Hugging Face layout.

The reader parses the safetensors header itself and reads each tensor on demand, so that
bfloat16 tensors can be read (numpy has no bfloat16) and nothing is loaded until asked for.
It imports no paddle, so tools and tests can use it without building a model.
"""

import json
import logging
import mmap
import os
import re
import tempfile
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")
_FILE_MODE = 0o644  # mkstemp creates 0600 files; checkpoints are meant to be shared
# The safetensors library refuses headers above 100 MB; so do we.
_MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype name -> little-endian numpy dtype used to read the raw bytes.
_STORAGE = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_FLOAT_TYPES = {"F64", "F32", "F16", "BF16"}
# Tensors are widened in blocks of about this many elements (4 MiB of float32).
_BLOCK_ELEMENTS = 1 << 20
_SAVE_FLOAT = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


class CheckpointError(Exception):
    """A checkpoint is missing, unsupported, truncated or inconsistent."""


@dataclass(frozen=True)
class _Entry:
    path: str
    dtype: str
    shape: tuple
    start: int  # absolute byte offsets in the file
    end: int


def _corrupt(path, why):
    return CheckpointError(f"checkpoint file '{path}' is truncated or corrupt: {why}")


def _read_header(path):
    """Parse and validate one safetensors file's header; returns {name: _Entry}."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _corrupt(path, f"file is {size} bytes, shorter than the 8-byte header length")
            header_len = int.from_bytes(prefix, "little")
            if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
                raise _corrupt(path, f"header length {header_len} does not fit in a {size}-byte file")
            raw = f.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint file '{path}': {exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")

    data_start = 8 + header_len
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _parse_entry(path, name, info, data_start, size)
    return entries


def _parse_entry(path, name, info, data_start, file_size):
    if not isinstance(info, dict):
        raise _corrupt(path, f"header entry for '{name}' is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _STORAGE:
        raise _corrupt(path, f"tensor '{name}' has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _corrupt(path, f"tensor '{name}' has invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _corrupt(path, f"tensor '{name}' has invalid data_offsets {offsets!r}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * _STORAGE[dtype].itemsize
    begin, end = offsets
    if end - begin != nbytes:
        raise _corrupt(
            path, f"tensor '{name}' spans {end - begin} bytes but {dtype}{shape} needs {nbytes}"
        )
    if data_start + end > file_size:
        raise _corrupt(
            path, f"tensor '{name}' ends at byte {data_start + end} but the file has {file_size} bytes"
        )
    return _Entry(path, dtype, tuple(shape), data_start + begin, data_start + end)


def _read_index(index_path):
    """Entries of a sharded checkpoint, checked against the index's weight_map."""
    try:
        with open(index_path, "r", encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(index_path, f"cannot parse index JSON ({exc})") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise _corrupt(index_path, "index has no 'weight_map'")

    bad = [s for s in weight_map.values() if not isinstance(s, str) or os.path.basename(s) != s]
    if bad:
        raise _corrupt(index_path, f"index names an invalid shard file {bad[0]!r}")

    referenced = set(weight_map.values())
    for shard in referenced:
        match = _SHARD_RE.match(shard)
        if match:
            count = int(match.group(2))
            for i in range(1, count + 1):
                expected = f"model-{i:05d}-of-{count:05d}.safetensors"
                if expected not in referenced:
                    raise _corrupt(index_path, f"index references no tensor of shard '{expected}'")

    folder = os.path.dirname(index_path)
    entries = {}
    for shard in sorted(referenced):
        shard_path = os.path.join(folder, shard)
        if not os.path.isfile(shard_path):
            raise _corrupt(index_path, f"index references shard '{shard}', which does not exist")
        for name, entry in _read_header(shard_path).items():
            if weight_map.get(name) != shard:
                raise _corrupt(
                    index_path, f"tensor '{name}' of shard '{shard}' is missing from the index weight_map"
                )
            entries[name] = entry
    missing = sorted(set(weight_map) - set(entries))
    if missing:
        raise _corrupt(
            index_path,
            f"{len(missing)} tensor(s) listed in the index are not in their shard, e.g. "
            f"'{missing[0]}' (expected in '{weight_map[missing[0]]}')",
        )
    return entries


class Checkpoint:
    """Lazy read access to the tensors of one checkpoint; use ``open_checkpoint``."""

    def __init__(self, source, entries):
        self._source = source
        self._entries = entries
        self._maps = {}  # path -> the file's bytes through a copy-on-write memory map (get_mapped)

    def keys(self):
        return sorted(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def __len__(self):
        return len(self._entries)

    def _entry(self, name):
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"tensor '{name}' is not in checkpoint '{self._source}'") from None

    def shape(self, name):
        return self._entry(name).shape

    def stored_dtype(self, name):
        """The safetensors dtype ("BF16", "F32", ...), read from the header."""
        return self._entry(name).dtype

    def get_stored(self, name):
        """(array, safetensors dtype) as stored: bf16 comes as uint16 bit patterns (numpy has no bf16).

        Bytes are read with a plain file read rather than a memory map, so a tensor that is widened
        leaves no file pages counted in the process's memory (weights kept as stored: `get_mapped`).
        """
        entry = self._entry(name)
        storage = _STORAGE[entry.dtype]
        count = (entry.end - entry.start) // storage.itemsize
        values = np.fromfile(entry.path, dtype=storage, count=count, offset=entry.start).reshape(entry.shape)
        if entry.dtype not in _FLOAT_TYPES:
            values = values.astype(values.dtype.newbyteorder("="), copy=False)
        return values, entry.dtype

    def get(self, name):
        """Tensor as a new array: floats as float32 (bf16/f16 upcast), other dtypes unchanged."""
        return as_float32(*self.get_stored(name))

    def get_stored_stacked(self, names):
        """(array, dtype) of float tensors of one dtype stacked along axis 0, read straight into one array.

        For the fused q/k/v and gate/up weights: no per-part arrays and no concatenation copy.
        """
        entries = [self._entry(name) for name in names]
        kinds = {entry.dtype for entry in entries}
        if len(kinds) != 1 or entries[0].dtype not in _FLOAT_TYPES or len({e.shape[1:] for e in entries}) != 1:
            raise CheckpointError(f"tensors {names} cannot be stacked: dtypes {sorted(kinds)}")
        out = np.empty((sum(e.shape[0] for e in entries), *entries[0].shape[1:]), dtype=_STORAGE[entries[0].dtype])
        view, offset = memoryview(out.reshape(-1).view(np.uint8)), 0
        for entry in entries:
            size = entry.end - entry.start
            with open(entry.path, "rb", buffering=0) as f:
                f.seek(entry.start)
                if f.readinto(view[offset:offset + size]) != size:
                    raise CheckpointError(f"'{entry.path}' is truncated")
            offset += size
        return out, entries[0].dtype

    def get_slice(self, name, axis, start, stop):
        """(array, dtype) of rows (axis 0) or columns (axis 1) start:stop of a 2-D tensor, or of the rows of
        a 1-D one, reading only their bytes: a tensor-parallel rank loads its slice of each weight and
        never the whole tensor. Rows are one read; columns are copied out of a memory map of the file."""
        entry = self._entry(name)
        storage = _STORAGE[entry.dtype]
        if axis not in (0, 1) or len(entry.shape) <= axis or not 0 <= start <= stop <= entry.shape[axis]:
            raise CheckpointError(f"tensor '{name}' {list(entry.shape)} has no slice {start}:{stop} on axis {axis}")
        row_items = int(np.prod(entry.shape[1:], dtype=np.int64))
        if axis == 0:
            values = np.fromfile(entry.path, dtype=storage, count=(stop - start) * row_items,
                                 offset=entry.start + start * row_items * storage.itemsize)
            values = values.reshape((stop - start, *entry.shape[1:]))
        else:
            whole, _ = self._mapped_entry(entry)
            values = np.ascontiguousarray(whole[:, start:stop])
        if entry.dtype not in _FLOAT_TYPES:
            values = values.astype(values.dtype.newbyteorder("="), copy=False)
        return values, entry.dtype

    def _mapped_entry(self, entry):
        """(view of the file's copy-on-write memory map shaped as the tensor, dtype)."""
        if entry.path not in self._maps:
            with open(entry.path, "rb") as f:
                self._maps[entry.path] = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY), np.uint8)
        storage = _STORAGE[entry.dtype]
        return self._maps[entry.path][entry.start:entry.end].view(storage).reshape(entry.shape), entry.dtype

    def get_mapped(self, names):
        """(array, dtype) of float tensors stored back to back in one file, as a view of a memory map of
        that file; None when they are not (then read them with `get_stored_stacked`).

        For weights that stay as stored (bf16 on CPU): the array costs neither a copy nor a page
        fault at load time. The pages come in from the page cache when first used, and they are
        shared with it. The map is copy-on-write, so a write to the array never reaches the file.
        A view outlives `close`: it keeps its map alive.
        """
        entries = [self._entry(name) for name in names]
        first = entries[0]
        storage = _STORAGE[first.dtype]
        if (first.dtype not in _FLOAT_TYPES or first.start % storage.itemsize
                or any(e.path != first.path or e.dtype != first.dtype or e.shape[1:] != first.shape[1:]
                       for e in entries)
                or any(a.end != b.start for a, b in zip(entries, entries[1:]))):
            return None
        rows = sum(e.shape[0] for e in entries) if first.shape else None
        span = _Entry(first.path, first.dtype, (rows, *first.shape[1:]) if first.shape else (), first.start,
                      entries[-1].end)
        return self._mapped_entry(span)

    def close(self):
        """Forgets the memory maps; arrays taken from them keep theirs alive."""
        self._maps.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def open_checkpoint(model_dir):
    """Open ``model.safetensors`` or the sharded ``model.safetensors.index.json`` in ``model_dir``."""
    if not os.path.isdir(model_dir):
        raise CheckpointError(f"checkpoint directory '{model_dir}' does not exist")
    single = os.path.join(model_dir, SINGLE_FILE)
    index = os.path.join(model_dir, INDEX_FILE)
    if os.path.isfile(single):
        return Checkpoint(single, _read_header(single))
    if os.path.isfile(index):
        return Checkpoint(index, _read_index(index))
    for name in ("pytorch_model.bin", "pytorch_model.bin.index.json"):
        if os.path.exists(os.path.join(model_dir, name)):
            raise CheckpointError(
                f"'{model_dir}' only has '{name}': .bin checkpoints are not supported, "
                "convert them to safetensors"
            )
    raise CheckpointError(f"no checkpoint in '{model_dir}': looked for '{SINGLE_FILE}' and '{INDEX_FILE}'")


def empty_float32(shape):
    """Uninitialised float32 array aligned to 64 bytes, as MKL's kernels like (numpy promises 16)."""
    count = int(np.prod(shape, dtype=np.int64))
    buffer = np.empty(count + 16, dtype=np.float32)
    offset = (-buffer.ctypes.data % 64) // buffer.itemsize
    return buffer[offset:offset + count].reshape(shape)


def widen_to_float32(stored, kind, out, transpose=False, pool=None):
    """Write a stored tensor (see `Checkpoint.get_stored`) into the float32 array `out`, transposed if asked.

    Works in cache-sized blocks spread over `pool`'s threads (numpy releases the GIL): a one-shot
    transpose of a large [out, in] matrix is cache-hostile and took seconds per matrix.
    """
    source = stored.T if transpose else stored
    if source.shape != out.shape:
        raise ValueError(f"cannot write a {source.shape} tensor into a {out.shape} array")
    if kind == "BF16":
        out_bits = out.view(np.uint32)

        def fill(part):  # a bf16 value is the high half of the float32 with the same bits
            np.left_shift(source[part], 16, out=out_bits[part], dtype=np.uint32)
    else:
        def fill(part):
            out[part] = source[part]
    if out.ndim == 0 or out.size < _BLOCK_ELEMENTS:
        fill(Ellipsis)
        return out
    if transpose:  # tiles of 128 stored columns x 1024 stored rows were the fastest measured
        parts = [(slice(col, col + 128), slice(row, row + 1024))
                 for row in range(0, out.shape[1], 1024) for col in range(0, out.shape[0], 128)]
    else:
        step = max(1, _BLOCK_ELEMENTS // (out.size // out.shape[0]))
        parts = [slice(start, start + step) for start in range(0, out.shape[0], step)]
    for _ in (pool.map(fill, parts) if pool else map(fill, parts)):
        pass
    return out


def as_float32(stored, kind):
    """A stored tensor as a new float32 array (floats) or unchanged (other dtypes)."""
    if kind not in _FLOAT_TYPES:
        return stored
    return widen_to_float32(stored, kind, np.empty(stored.shape, dtype=np.float32))


def to_bf16_bits(array):
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    nan = np.isnan(array)
    rounded[nan] = (bits[nan] >> 16) | np.uint32(0x0040)
    return rounded.astype("<u2")


def _encode(array, float_dtype):
    """(safetensors dtype, little-endian bytes) for one tensor."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        if float_dtype == "BF16":
            return "BF16", to_bf16_bits(array).tobytes()
        storage = _STORAGE[float_dtype]
    else:
        matches = [
            k
            for k, v in _STORAGE.items()
            if k != "BF16" and v.kind == array.dtype.kind and v.itemsize == array.dtype.itemsize
        ]
        if not matches:
            raise ValueError(f"cannot store numpy dtype {array.dtype} in safetensors")
        float_dtype, storage = matches[0], _STORAGE[matches[0]]
    return float_dtype, np.ascontiguousarray(array, dtype=storage).tobytes()


def _write_temp_safetensors(folder, items, metadata):
    """Write (name, dtype, shape, bytes) items to a new temporary file in ``folder``; returns its path."""
    header = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, data in items:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the safetensors library does
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for _, _, _, data in items:
                f.write(data)
        os.chmod(tmp, _FILE_MODE)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _write_json(path, obj):
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=os.path.dirname(path))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)


def save_checkpoint(model_dir, tensors, dtype="float32", max_shard_bytes=5 * 2**30, metadata=None):
    """Write tensors as ``model.safetensors`` or as HF-style shards plus an index.

    ``tensors`` is a dict or an iterable of (name, array) pairs; it is consumed once, holding at
    most one shard in memory. Float arrays are stored as ``dtype``; other arrays keep their type.
    Old checkpoint entry points are removed first and the index is written last, so an
    interrupted save never leaves a loadable but incomplete checkpoint.
    """
    if dtype not in _SAVE_FLOAT:
        raise ValueError(f"dtype must be one of {sorted(_SAVE_FLOAT)}, got {dtype!r}")
    float_dtype = _SAVE_FLOAT[dtype]
    header_meta = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    os.makedirs(model_dir, exist_ok=True)
    for name in (INDEX_FILE, SINGLE_FILE):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            logger.info("removing old %s", path)
            os.unlink(path)

    items = tensors.items() if isinstance(tensors, dict) else tensors
    temp_files, shard_keys, seen = [], [], set()
    current, current_bytes, total_size = [], 0, 0
    try:
        for name, array in items:
            if name in seen:
                raise ValueError(f"tensor name '{name}' is given twice")
            seen.add(name)
            st_dtype, data = _encode(array, float_dtype)
            if current and current_bytes + len(data) > max_shard_bytes:
                temp_files.append(_write_temp_safetensors(model_dir, current, header_meta))
                shard_keys.append([item[0] for item in current])
                current, current_bytes = [], 0
            current.append((name, st_dtype, np.shape(array), data))
            current_bytes += len(data)
            total_size += len(data)
        if current or not temp_files:
            temp_files.append(_write_temp_safetensors(model_dir, current, header_meta))
            shard_keys.append([item[0] for item in current])
    except BaseException:
        for tmp in temp_files:
            os.unlink(tmp)
        raise

    if len(temp_files) == 1:
        os.replace(temp_files[0], os.path.join(model_dir, SINGLE_FILE))
        final_names = {SINGLE_FILE}
        logger.info("wrote %s (%d tensors, %d bytes)", SINGLE_FILE, len(seen), total_size)
    else:
        count = len(temp_files)
        final_names, weight_map = set(), {}
        for i, (tmp, keys) in enumerate(zip(temp_files, shard_keys), start=1):
            shard = f"model-{i:05d}-of-{count:05d}.safetensors"
            os.replace(tmp, os.path.join(model_dir, shard))
            final_names.add(shard)
            weight_map.update((key, shard) for key in keys)
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        _write_json(os.path.join(model_dir, INDEX_FILE), index)
        logger.info("wrote %d shards and %s (%d tensors, %d bytes)", count, INDEX_FILE, len(seen), total_size)

    for name in os.listdir(model_dir):
        if _SHARD_RE.match(name) and name not in final_names:
            logger.info("removing stale shard %s", name)
            os.unlink(os.path.join(model_dir, name))


# --- PaddleMIX-format checkpoints ------------------------------------------------------
# PaddleMIX saves InternVL2 in Paddle's layout: nn.Linear weights are [in, out], and its
# Qwen2/Llama are paddlenlp classes whose state dicts say `qwen2.`/`llama.` where the
# original says `model.` (paddlenlp's `_get_name_mappings`). InternViT, mlp1 and InternLM2
# keep the original names there, so the layout is told apart by the shape of a fused qkv.
_PADDLENLP_PREFIXES = ("language_model.qwen2.", "language_model.llama.")
_LAYOUT_PROBE = "vision_model.encoder.layers.0.attn.qkv.weight"  # [3C, C] originally, [C, 3C] in Paddle
_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "tok_embeddings.weight")  # [vocab, hidden] in both


def is_paddle_layout(checkpoint):
    """True for a checkpoint saved by PaddleMIX's InternVLChatModel."""
    if any(key.startswith(_PADDLENLP_PREFIXES) for key in checkpoint.keys()):
        return True
    if _LAYOUT_PROBE not in checkpoint:
        return False
    rows, cols = checkpoint.shape(_LAYOUT_PROBE)
    return cols == 3 * rows


class OriginalLayoutView:
    """A PaddleMIX-format checkpoint read through the original names and [out, in] Linear weights."""

    def __init__(self, checkpoint):
        self._checkpoint = checkpoint
        self._names = {self._original_name(key): key for key in checkpoint.keys()}

    @staticmethod
    def _original_name(key):
        for prefix in _PADDLENLP_PREFIXES:
            if key.startswith(prefix):
                return "language_model.model." + key[len(prefix):]
        return key

    @staticmethod
    def _is_linear_weight(name, shape):
        # Every 2-D tensor of InternVL is a Linear weight except the token embeddings.
        return len(shape) == 2 and not name.endswith(_EMBEDDING_SUFFIXES)

    def _stored(self, name):
        try:
            return self._names[name]
        except KeyError:
            raise CheckpointError(f"tensor '{name}' is not in the PaddleMIX checkpoint") from None

    def keys(self):
        return sorted(self._names)

    def __contains__(self, name):
        return name in self._names

    def shape(self, name):
        shape = self._checkpoint.shape(self._stored(name))
        return shape[::-1] if self._is_linear_weight(name, shape) else shape

    def stored_dtype(self, name):
        return self._checkpoint.stored_dtype(self._stored(name))

    def get_stored(self, name):
        array, kind = self._checkpoint.get_stored(self._stored(name))
        return (array.T if self._is_linear_weight(name, array.shape) else array), kind

    def get(self, name):
        return as_float32(*self.get_stored(name))

    def get_slice(self, name, axis, start, stop):
        """As `Checkpoint.get_slice`, on the original layout: a Linear weight is stored transposed."""
        stored = self._stored(name)
        if self._is_linear_weight(name, self._checkpoint.shape(stored)):
            array, kind = self._checkpoint.get_slice(stored, 1 - axis, start, stop)
            return array.T, kind
        return self._checkpoint.get_slice(stored, axis, start, stop)


def original_layout(checkpoint):
    """`checkpoint` itself, or a PaddleMIX-format one seen in the original HF layout."""
    if not is_paddle_layout(checkpoint):
        return checkpoint
    logger.info("PaddleMIX-format checkpoint: reading [in, out] Linear weights and paddlenlp names")
    return OriginalLayoutView(checkpoint)
