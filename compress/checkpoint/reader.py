"""Lazy reading of a Hugging Face model folder.

A `Checkpoint` knows the tensor names, shapes and dtypes of a folder from the safetensors headers
alone, and reads one tensor at a time through memory-mapped files. It validates what it can
before any data is read: a missing folder, a missing `config.json`, an index naming a missing
shard, a truncated or corrupt safetensors file all raise `CompressError` with a one-line message.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compress.errors import CompressError

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"

# Files copied beside the weights when a checkpoint is rewritten.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)

_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "F8_E5M2": getattr(torch, "float8_e5m2", None),
}
DTYPE_TO_ST = {v: k for k, v in _ST_DTYPES.items() if v is not None}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, known without reading its data."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path
    offset: int = -1  # where its bytes start in `file` (safetensors; -1 for .bin)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and validate a safetensors header; raise CompressError on a corrupt/truncated file.

    The header is validated by the safetensors library itself (types of every field, offsets that
    tile the data exactly, no overlap); the checks here only make its messages specific. The
    returned header carries `__data_start__`, the file offset of the data area."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CompressError(f"corrupt safetensors file {path}: shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise CompressError(f"corrupt safetensors file {path}: header length {n} exceeds the file")
            raw = f.read(n)
    except OSError as e:
        raise CompressError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CompressError(f"corrupt safetensors file {path}: header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CompressError(f"corrupt safetensors file {path}: header is not a JSON object")
    _validate_with_safetensors(path, header, size - 8 - n)
    for name, meta in header.items():
        if name != "__metadata__" and _ST_DTYPES.get(meta["dtype"]) is None:
            raise CompressError(f"unsupported dtype {meta['dtype']} for tensor {name!r} in {path}")
    header["__data_start__"] = 8 + n
    return header


def _validate_with_safetensors(path: Path, header: dict[str, Any], data_len: int) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu"):
            return
    except Exception as e:  # noqa: BLE001 - SafetensorError, or an OSError while mapping the file
        reason = str(e).removeprefix("Error while deserializing header: ")
    if "not fully covered" in reason:  # the types were fine: data_offsets are pairs of integers
        end, name = max((m["data_offsets"][1], k) for k, m in header.items() if k != "__metadata__")
        if end > data_len:
            raise CompressError(f"truncated safetensors file {path}: tensor {name!r} ends at byte {end} "
                                f"but the file holds {data_len} data bytes")
    raise CompressError(f"corrupt safetensors file {path}: {reason}")


class Checkpoint:
    """A Hugging Face model folder, read lazily.

    >>> ckpt = Checkpoint("models/smollm2")
    >>> ckpt.names()[:2]; ckpt.info("model.embed_tokens.weight").shape
    >>> w = ckpt.get("model.layers.0.mlp.up_proj.weight")   # one tensor, memory-mapped
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if str(path).endswith(".gguf"):
            raise CompressError(f"{path} is a GGUF file: convert it first with `compress convert {path} -o OUT`")
        if not self.path.exists():
            raise CompressError(f"model folder not found: {self.path}")
        if not self.path.is_dir():
            raise CompressError(f"not a model folder: {self.path} is a file")
        cfg = self.path / "config.json"
        if not cfg.is_file():
            raise CompressError(f"not a model folder: {self.path} has no config.json")
        try:
            self.config: dict[str, Any] = json.loads(cfg.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CompressError(f"invalid config.json in {self.path}: {e}") from None
        except OSError as e:
            raise CompressError(f"cannot read {cfg}: {e.strerror}") from None
        if not isinstance(self.config, dict):
            raise CompressError(f"invalid config.json in {self.path}: a JSON object is expected, "
                                f"not a {type(self.config).__name__}")
        self._tensors: dict[str, TensorInfo] = {}
        self._handles: dict[Path, Any] = {}
        self._bin_cache: dict[Path, dict[str, torch.Tensor]] = {}
        self._fds: dict[Path, int] = {}
        self._fd_lock = threading.Lock()
        self.format = self._index()

    # ---- discovery -------------------------------------------------------------------------
    def _index(self) -> str:
        p = self.path
        if (p / SAFE_INDEX).is_file():
            files = self._files_from_index(p / SAFE_INDEX)
            fmt = "safetensors"
        elif (p / SAFE_SINGLE).is_file():
            files = [p / SAFE_SINGLE]
            fmt = "safetensors"
        elif (p / BIN_INDEX).is_file():
            files = self._files_from_index(p / BIN_INDEX)
            fmt = "bin"
        elif (p / BIN_SINGLE).is_file():
            files = [p / BIN_SINGLE]
            fmt = "bin"
        else:
            singles = sorted(p.glob("*.safetensors"))
            if not singles:
                raise CompressError(f"no weights in {p}: expected model.safetensors or {SAFE_INDEX}")
            files, fmt = singles, "safetensors"
        for f in files:
            if fmt == "safetensors":
                self._add_safetensors(f)
            else:
                self._add_bin(f)
        if not self._tensors:
            raise CompressError(f"no tensors found in {p}")
        return fmt

    def _files_from_index(self, index: Path) -> list[Path]:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise CompressError(f"invalid index file {index}: no weight_map") from None
        except OSError as e:
            raise CompressError(f"cannot read {index}: {e.strerror}") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CompressError(f"invalid index file {index}: weight_map must map tensor names to shard file names")
        files = []
        for shard in dict.fromkeys(weight_map.values()):
            if Path(shard).name != shard or shard in ("", ".", ".."):
                raise CompressError(f"invalid index file {index}: shard {shard!r} is not a file name in {self.path}")
            f = self.path / shard
            if not f.is_file():
                raise CompressError(f"index {index.name} names a missing shard: {shard}")
            files.append(f)
        return files

    def _add_safetensors(self, f: Path) -> None:
        header = read_safetensors_header(f)
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if name == "__data_start__":
                continue
            if name in self._tensors:
                raise CompressError(f"tensor {name!r} appears in two shards ({self._tensors[name].file.name}, {f.name})")
            offset = header["__data_start__"] + meta["data_offsets"][0]
            self._tensors[name] = TensorInfo(name, tuple(meta["shape"]), _ST_DTYPES[meta["dtype"]], f, offset)

    def _add_bin(self, f: Path) -> None:
        # Legacy pickle checkpoints: never unpickle arbitrary objects.
        try:
            sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - any failure here is a bad file
            raise CompressError(f"cannot read {f} (loaded with weights_only=True): {str(e).splitlines()[0]}") from None
        if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in sd.items()):
            raise CompressError(f"cannot read {f}: it holds a {type(sd).__name__}, not a mapping of tensor names to tensors")
        self._bin_cache[f] = sd
        for name, t in sd.items():
            self._tensors[name] = TensorInfo(name, tuple(t.shape), t.dtype, f)

    # ---- queries ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self._tensors[name]
        except KeyError:
            raise CompressError(f"tensor {name!r} not in {self.path}") from None

    def infos(self) -> list[TensorInfo]:
        return list(self._tensors.values())

    def files(self) -> list[Path]:
        return list(dict.fromkeys(t.file for t in self._tensors.values()))

    def size_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.files())

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (memory-mapped; a copy is made only when the caller writes to it)."""
        info = self.info(name)
        if self.format == "bin":
            return self._bin_cache[info.file][name]
        handle = self._handles.get(info.file)
        if handle is None:
            from safetensors import safe_open

            try:
                handle = safe_open(str(info.file), framework="pt", device="cpu")
            except Exception as e:  # noqa: BLE001
                raise CompressError(f"cannot open {info.file}: {e}") from None
            self._handles[info.file] = handle
        return handle.get_tensor(name)

    def read(self, name: str) -> torch.Tensor:
        """Read one tensor into its own memory with pread (thread-safe; no mmap, so the bytes read do
        not stay mapped in this process: a merge of models larger than memory stays flat)."""
        info = self.info(name)
        if self.format == "bin":
            return self._bin_cache[info.file][name]
        with self._fd_lock:
            fd = self._fds.get(info.file)
            if fd is None:
                try:
                    fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
                except OSError as e:
                    raise CompressError(f"cannot open {info.file}: {e.strerror or e}") from None
        n = info.nbytes
        buf = torch.empty(n, dtype=torch.uint8)  # not zero-filled, unlike bytearray(n)
        if n == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        view = memoryview(buf.numpy()).cast("B")
        got = 0
        while got < n:
            try:
                k = os.preadv(fd, [view[got:]], info.offset + got)
            except OSError as e:
                raise CompressError(f"cannot read {name!r} from {info.file}: {e.strerror or e}") from None
            if k <= 0:
                raise CompressError(f"short read of {name!r} from {info.file}: the file changed or was truncated")
            got += k
        return buf.view(info.dtype).reshape(info.shape)

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def architectures(self) -> list[str]:
        return list(self.config.get("architectures") or [])

    def side_files(self) -> list[Path]:
        """Tokenizer, chat-template and generation-config files present in the folder: never code
        (an output's modelling code is rendered from the package, `compress.arch.remote_code`)."""
        return [self.path / n for n in SIDE_FILES if not n.endswith(".py") and (self.path / n).is_file()]

    def close(self) -> None:
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        self._handles.clear()
        self._bin_cache.clear()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self._tensors)} tensors)"
