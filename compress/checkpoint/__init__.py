"""Files, not models: lazy reading, atomic sharded writing, provenance, GGUF import."""

from compress.checkpoint.atomic import atomic_dir, check_output
from compress.checkpoint.provenance import PROVENANCE_FILE, write_provenance
from compress.checkpoint.reader import Checkpoint, TensorInfo
from compress.checkpoint.save import copy_side_files, save_checkpoint
from compress.checkpoint.writer import ShardedWriter, TensorSpec, parse_size, write_tensors

__all__ = [
    "PROVENANCE_FILE",
    "Checkpoint",
    "ShardedWriter",
    "TensorInfo",
    "TensorSpec",
    "atomic_dir",
    "check_output",
    "copy_side_files",
    "parse_size",
    "save_checkpoint",
    "write_provenance",
    "write_tensors",
]
