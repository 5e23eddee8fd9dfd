"""Text, chat and preference data -> token windows / batches. No model code here."""

from compress.data.generated import generate_windows
from compress.data.text import load_windows, pack_windows, read_documents, sample_windows, tokenize_stream

__all__ = ["generate_windows", "load_windows", "pack_windows", "read_documents", "sample_windows", "tokenize_stream"]
