"""A tokenizer seen as bytes: the exact UTF-8 bytes of every token, and fragment encoding with spans.

Cross-tokenizer work (Cool-Fusion's segments, token alignment between a pivot and a source) needs
what `tokenizer.decode` hides: the bytes each token stands for, even when a token holds only part of a
UTF-8 character. Two tokenizer kinds are read exactly:

- byte-level BPE (GPT-2, Llama-3, SmolLM2, Qwen): a token string is bytes written with GPT-2's
  byte-to-unicode table;
- SentencePiece-style BPE with byte fallback (Llama-2, Gemma, Mistral): `▁` is a space and
  `<0xNN>` is the byte NN.

Special tokens (BOS, EOS, chat markers) stand for no bytes. `encode_fragment` encodes text found in the
middle of a stream (no BOS, no dummy prefix) and returns each token's byte span; a tokenizer whose
encoding does not reproduce the text's bytes (a normaliser that rewrites text, a dummy prefix space) is
refused with a `CompressError` when the view is built.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from compress.errors import CompressError

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SURROGATES = re.compile("[\udc80-\udcff]+|[^\udc80-\udcff]+")
PROBE = " Hello world.\n\n12.5 + $18 = x;\ttabs  and spaces 日本語です café 😀 end"


@lru_cache(maxsize=1)
def byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode character -> byte table (inverse of `bytes_to_unicode`)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def complete_prefix(data: bytes) -> tuple[str, int]:
    """The text of `data` up to an unfinished UTF-8 character at its end: (text, bytes used).

    Bytes that can never be UTF-8 (a model may generate any byte sequence) become the lone surrogates
    U+DC80..U+DCFF (Python's `surrogateescape`), so text and bytes stay in one-to-one correspondence
    (`utf8(text)` gives the bytes back); `clean` drops them before text is shown."""
    dec = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    text = dec.decode(data, final=False)
    pending = len(dec.getstate()[0])
    return text, len(data) - pending


def utf8(text: str) -> bytes:
    """Bytes of a text from `complete_prefix` (lone surrogates back to their bytes)."""
    return text.encode("utf-8", "surrogateescape")


def from_utf8(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def clean(text: str) -> str:
    """`text` without the lone surrogates that stand for invalid bytes: never a U+FFFD."""
    return text.encode("utf-8", "ignore").decode("utf-8")


def _runs(text: str) -> list[tuple[str, bool]]:
    """Split `text` into runs of ordinary characters and of lone surrogates (raw bytes): [(run, is_bytes)]."""
    return [(m.group(0), "\udc80" <= m.group(0)[0] <= "\udcff") for m in _SURROGATES.finditer(text)]


@dataclass
class Fragment:
    """A text encoded in the middle of a stream: ids, character spans (tokenizer offsets), byte ends."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    byte_ends: list[int]


class TokenizerView:
    """Bytes of tokens and exact fragment encoding for one Hugging Face fast tokenizer."""

    def __init__(self, tokenizer: Any, name: str = "model"):
        self.tokenizer = tokenizer
        self.name = name
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise CompressError(f"{name}: a fast (tokenizers) tokenizer is needed; this one is {type(tokenizer).__name__}")
        self.backend = backend
        dec = json.loads(backend.decoder.__getstate__()) if backend.decoder is not None else {}
        text = json.dumps(dec)
        if '"ByteLevel"' in text:
            self.kind = "byte_level"
        elif '"ByteFallback"' in text or '"Metaspace"' in text or "\\u2581" in text or "▁" in text:
            self.kind = "sentencepiece"
        else:
            raise CompressError(f"{name}: unsupported tokenizer decoder {dec.get('type', 'none')!r} "
                                f"(byte-level BPE or SentencePiece with byte fallback are supported)")
        self.special_ids = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        self.special_ids.update(tokenizer.all_special_ids)
        self._bytes: dict[int, bytes] = {}
        self._byte_ids: list[int] | None = None
        self._check_round_trip()

    # ------------------------------------------------------------------ bytes of tokens
    def token_bytes(self, token_id: int) -> bytes:
        b = self._bytes.get(token_id)
        if b is None:
            b = self._compute_bytes(token_id)
            self._bytes[token_id] = b
        return b

    def _compute_bytes(self, token_id: int) -> bytes:
        if token_id in self.special_ids:
            return b""
        piece = self.backend.id_to_token(int(token_id))
        if piece is None:
            raise CompressError(f"{self.name}: token id {token_id} is outside the vocabulary")
        if self.kind == "byte_level":
            table = byte_level_decoder()
            try:
                return bytes(table[c] for c in piece)
            except KeyError:  # an added (non-special) token stored as plain text
                return piece.encode("utf-8")
        m = _BYTE_TOKEN.match(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return piece.replace("▁", " ").encode("utf-8")

    def ids_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.token_bytes(i) for i in ids)

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` without special tokens; an unfinished character at the end is left out (never U+FFFD)."""
        return complete_prefix(self.ids_bytes(ids))[0]

    # ------------------------------------------------------------------ encoding
    def byte_token(self, byte: int) -> int:
        """The id of the token that is exactly the byte `byte`."""
        if self._byte_ids is None:
            vocab = self.backend.get_vocab()
            table = {b: c for c, b in byte_level_decoder().items()}
            names = [table[b] if self.kind == "byte_level" else f"<0x{b:02X}>" for b in range(256)]
            self._byte_ids = [vocab.get(n, -1) for n in names]
        tid = self._byte_ids[byte]
        if tid < 0:
            raise CompressError(f"{self.name}: its vocabulary has no token for byte 0x{byte:02X}")
        return tid

    def encode_fragment(self, text: str) -> Fragment:
        """Encode `text` as a piece of a longer stream: no special tokens, byte-exact. Raw bytes (lone
        surrogates, see `complete_prefix`) become byte tokens."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        at = 0
        # Text that spells a special token ("<eos>") is text here, not that token.
        was = self.backend.encode_special_tokens
        self.backend.encode_special_tokens = True
        try:
            for run, raw in _runs(text):
                if raw:
                    ids.extend(self.byte_token(b) for b in utf8(run))
                    offsets.extend((at + i, at + i + 1) for i in range(len(run)))
                else:
                    enc = self.backend.encode(run, add_special_tokens=False)
                    ids.extend(enc.ids)
                    offsets.extend((at + s, at + e) for s, e in enc.offsets)
                at += len(run)
        finally:
            self.backend.encode_special_tokens = was
        ends: list[int] = []
        n = 0
        for i in ids:
            n += len(self.token_bytes(i))
            ends.append(n)
        return Fragment(ids=ids, offsets=offsets, byte_ends=ends)

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the tokens of `text` (the tokenizer's offset mapping, no special tokens)."""
        return self.encode_fragment(text).offsets

    def _check_round_trip(self) -> None:
        for probe in (PROBE, PROBE.lstrip(), "a"):
            frag = self.encode_fragment(probe)
            got = self.ids_bytes(frag.ids)
            if got != probe.encode("utf-8"):
                raise CompressError(
                    f"{self.name}: its tokenizer does not reproduce text byte for byte (encoding {probe[:12]!r} "
                    f"decodes to {got[:16]!r}); tokenizers that normalise text or add a prefix space are not supported")
