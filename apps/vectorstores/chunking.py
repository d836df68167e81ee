"""Text out of an uploaded file, and that text cut into token windows (runs on the default worker).

Tokens are counted with the store's embedding model's own tokenizer, loaded with the `tokenizers`
library from the model directory's tokenizer.json (no torch, no transformers): a chunk of N tokens
is N tokens to the model that embeds it, so a chunk never exceeds what the model takes. This runs on
the CPU `default` queue, never on the web (docs/vector_stores.md, "Chunking").
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

# What /files accepts for vector stores, by extension (a PDF is read by pypdf, the rest as UTF-8 text).
TEXT_EXTENSIONS = (".txt", ".md", ".markdown", ".json", ".jsonl")
PDF_EXTENSIONS = (".pdf",)
SUPPORTED_EXTENSIONS = TEXT_EXTENSIONS + PDF_EXTENSIONS

# OpenAI's `auto`: 800-token chunks overlapping by 400, capped at what the store's model takes.
AUTO_MAX_TOKENS, AUTO_OVERLAP_TOKENS = 800, 400
MIN_CHUNK_TOKENS, MAX_CHUNK_TOKENS = 100, 4096


class ExtractionError(Exception):
    """The file holds no text we can read; `code` is the file's last_error code."""

    def __init__(self, message: str, code: str = "unsupported_file"):
        super().__init__(message)
        self.code = code


def extract_text(path: Path, filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix in PDF_EXTENSIONS:
        text = _pdf_text(path)
    elif suffix in TEXT_EXTENSIONS:
        raw = path.read_bytes()
        if b"\x00" in raw:
            raise ExtractionError(f"{filename} is binary, not text.", code="invalid_file")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ExtractionError(f"{filename} is not UTF-8 text (byte {exc.start}).", code="invalid_file") from None
        if suffix == ".json":
            _check_json(text, filename)
    else:
        raise ExtractionError(f"{filename}: the file type {suffix or '(none)'} is not supported; "
                              f"supported: {', '.join(SUPPORTED_EXTENSIONS)}.")
    if not text.strip():
        raise ExtractionError(f"{filename} holds no text.", code="empty_file")
    return text


def _check_json(text: str, filename: str) -> None:
    try:
        json.loads(text)
    except ValueError as exc:
        raise ExtractionError(f"{filename} is not valid JSON: {exc}", code="invalid_file") from None


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    try:
        reader = PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types on a malformed file; each means "unreadable"
        raise ExtractionError(f"The PDF could not be read: {exc}", code="invalid_file") from None
    return "\n\n".join(pages)


@dataclass(frozen=True)
class Strategy:
    max_tokens: int
    overlap_tokens: int

    def as_json(self) -> dict:
        return {"type": "static", "static": {"max_chunk_size_tokens": self.max_tokens,
                                             "chunk_overlap_tokens": self.overlap_tokens}}

    @classmethod
    def from_json(cls, value: dict) -> "Strategy":
        static = value["static"]
        return cls(static["max_chunk_size_tokens"], static["chunk_overlap_tokens"])


def strategy_resolve(requested: dict | None, *, model_max_tokens: int) -> Strategy:
    """A validated `chunking_strategy` (None or auto: OpenAI's 800/400, capped by the model) as a static one."""
    if not requested or requested["type"] == "auto":
        size = min(AUTO_MAX_TOKENS, model_max_tokens)
        return Strategy(size, min(AUTO_OVERLAP_TOKENS, size // 2))
    return Strategy.from_json(requested)


@dataclass
class Piece:
    text: str
    tokens: int


@functools.lru_cache(maxsize=4)
def tokenizer_for(model_path: str):
    """The model's tokenizer (tokenizers' Rust implementation), without its special tokens or truncation."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def special_token_count(tokenizer) -> int:
    return len(tokenizer.encode("hello", add_special_tokens=True).ids) - len(
        tokenizer.encode("hello", add_special_tokens=False).ids)


def split(text: str, tokenizer, strategy: Strategy) -> list[Piece]:
    """Windows of at most `max_tokens` tokens, each starting `max - overlap` tokens after the previous one.

    Windows begin and end on word boundaries (a word's sub-word pieces stay together), so the text of a
    chunk tokenizes back to the same tokens; the text is cut from the original by character offsets.
    """
    encoding = tokenizer.encode(text, add_special_tokens=False)
    offsets, words = encoding.offsets, encoding.word_ids
    total = len(offsets)
    if total == 0:
        return []
    limit = settings.AIHUB_VECTOR_STORE_MAX_CHUNKS_PER_FILE
    step = strategy.max_tokens - strategy.overlap_tokens
    pieces, start = [], 0
    while start < total:
        end = min(start + strategy.max_tokens, total)
        while end < total and end - 1 > start and words[end] is not None and words[end] == words[end - 1]:
            end -= 1  # do not split a word: the window ends before it
        pieces.append(Piece(text[offsets[start][0]:offsets[end - 1][1]], end - start))
        if end == total:
            break
        if len(pieces) >= limit:
            raise ExtractionError(f"The file makes more than {limit} chunks (AIHUB_VECTOR_STORE_MAX_CHUNKS_PER_FILE).",
                                  code="file_too_large")
        following = max(start + step, start + 1)
        following = min(following, end)  # never skip text, even when a long word shortened the window
        while following > start + 1 and words[following] is not None and words[following] == words[following - 1]:
            following -= 1  # start on a word's first piece
        start = following
    return pieces
