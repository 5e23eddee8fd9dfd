"""Streaming sharded safetensors writer.

The layout (which tensor goes to which shard, at which offset) is planned from the tensor specs
before any data arrives, so each shard's header is written first and every tensor is written
straight to its place with `pwrite` as soon as it is ready: in any order, from any thread, and
without buffering a shard in memory. The result is byte-for-byte a standard safetensors file
(8-byte header length, JSON header padded to 8 bytes, tensor data) plus the HF index file.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from compress.checkpoint.reader import DTYPE_TO_ST, SAFE_INDEX, SAFE_SINGLE
from compress.errors import CompressError

DEFAULT_MAX_SHARD = 5 * 1000**3
_pwrite = os.pwrite  # module-level so a test can simulate a full disk


def parse_size(text: str | int) -> int:
    """'5GB' -> 5e9, '500MB' -> 5e8, '2GiB' -> 2*1024**3, 1234 -> 1234."""
    if isinstance(text, int):
        return text
    s = text.strip().upper().replace(" ", "")
    units = {"KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "B": 1}
    for unit, mult in units.items():  # noqa: B007 - used after the loop
        if s.endswith(unit):
            num = s[: -len(unit)]
            break
    else:
        num, mult = s, 1
    try:
        value = int(float(num) * mult)
    except ValueError:
        raise CompressError(f"invalid size {text!r}: use for example 5GB, 500MB or 2GiB") from None
    if value <= 0:
        raise CompressError(f"invalid size {text!r}: must be positive")
    return value


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Refuse a NaN or Inf entry in a floating-point tensor: no checkpoint is ever written with one.

    The check is one pass over the tensor (`torch.isfinite(t).all()`); the caller's atomic folder is
    then removed, so nothing is written at all."""
    if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise CompressError(f"tensor {name} has {bad} NaN/Inf values: refusing to write it; nothing was written")


def _header_bytes(entries: dict[str, dict], metadata: dict[str, str]) -> bytes:
    raw = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


class ShardedWriter:
    """Write planned tensors into `folder` as safetensors shards (+ index when more than one)."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        specs: Sequence[TensorSpec],
        max_shard_size: int | str = DEFAULT_MAX_SHARD,
        metadata: dict[str, str] | None = None,
    ):
        self.folder = Path(folder)
        self.specs = {s.name: s for s in specs}
        if len(self.specs) != len(specs):
            raise ValueError("duplicate tensor names in the write plan")
        limit = parse_size(max_shard_size)
        meta = {"format": "pt", **(metadata or {})}
        # Greedy fill in plan order; a tensor larger than the limit gets a shard of its own.
        groups: list[list[TensorSpec]] = [[]]
        used = 0
        for s in specs:
            if groups[-1] and used + s.nbytes > limit:
                groups.append([])
                used = 0
            groups[-1].append(s)
            used += s.nbytes
        n = len(groups)
        self._where: dict[str, tuple[int, int, int]] = {}  # name -> (shard, absolute offset, nbytes)
        self._fds: list[int] = []
        self._files: list[Path] = []
        self._written: set[str] = set()
        self._lock = threading.Lock()
        self.total_size = sum(s.nbytes for s in specs)
        for i, group in enumerate(groups):
            fname = SAFE_SINGLE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            entries, off = {}, 0
            for s in group:
                if s.dtype not in DTYPE_TO_ST:
                    raise ValueError(f"dtype {s.dtype} cannot be stored in safetensors")
                entries[s.name] = {"dtype": DTYPE_TO_ST[s.dtype], "shape": list(s.shape), "data_offsets": [off, off + s.nbytes]}
                off += s.nbytes
            header = _header_bytes(entries, meta)
            path = self.folder / fname
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            self._files.append(path)
            _write_all(fd, header, 0)
            os.ftruncate(fd, len(header) + off)
            for name, e in entries.items():
                self._where[name] = (i, len(header) + e["data_offsets"][0], e["data_offsets"][1] - e["data_offsets"][0])

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor (thread-safe; any order)."""
        spec = self.specs.get(name)
        if spec is None:
            raise ValueError(f"tensor {name!r} is not in the write plan")
        if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise ValueError(
                f"tensor {name!r}: got {tuple(tensor.shape)} {tensor.dtype}, planned {spec.shape} {spec.dtype}"
            )
        check_finite(name, tensor)
        with self._lock:
            if name in self._written:
                raise ValueError(f"tensor {name!r} written twice")
            self._written.add(name)
        shard, offset, nbytes = self._where[name]
        if nbytes:
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            _write_all(self._fds[shard], memoryview(data), offset)
            _start_writeback(self._fds[shard], offset, nbytes)

    def close(self) -> list[Path]:
        """Check every planned tensor arrived, flush, and write the index when sharded."""
        missing = [n for n in self.specs if n not in self._written]
        for fd in self._fds:
            os.fsync(fd)
            os.close(fd)
        self._fds = []
        if missing:
            raise ValueError(f"{len(missing)} planned tensors were never written, e.g. {missing[0]!r}")
        if len(self._files) > 1:
            weight_map = {name: self._files[w[0]].name for name, w in self._where.items()}
            index = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}
            (self.folder / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return self.files

    def abort(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []


def _sync_file_range():
    try:
        import ctypes

        fn = ctypes.CDLL("libc.so.6", use_errno=True).sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        return fn
    except (OSError, AttributeError):
        return None


_SYNC_FILE_RANGE = _sync_file_range()


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Linux: start writing these pages to disk now (SYNC_FILE_RANGE_WRITE, asynchronous), so the
    fsync at close waits for the last tensors only instead of the whole file. A no-op elsewhere."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, nbytes, 2)


def _write_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = _pwrite(fd, view, offset)
        if n <= 0:
            raise OSError("short write")
        view = view[n:]
        offset += n


def write_tensors(
    folder: str | os.PathLike[str],
    tensors: Iterable[tuple[str, torch.Tensor]],
    max_shard_size: int | str = DEFAULT_MAX_SHARD,
) -> list[Path]:
    """Convenience for tensors already in memory (e.g. a loaded model's state dict)."""
    items = list(tensors)
    writer = ShardedWriter(folder, [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in items], max_shard_size)
    try:
        for n, t in items:
            writer.write(n, t)
    except BaseException:
        writer.abort()
        raise
    return writer.close()
