"""Dataset formats (chat JSONL and instruction JSONL), validation, and safe dataset paths. No torch here.

Chat:         {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}  (ends with assistant)
Instruction:  {"instruction": "...", "input": "..."?, "output": "..."}
Both become a message list; the model learns the last assistant message.

Every reader goes through `_lines` and `_parse`: a line is read at most
AIHUB_MAX_DATASET_LINE_BYTES far (the rest of a longer one is skipped in
chunks, never held), and parsed within AIHUB_MAX_DATASET_JSON_DEPTH levels, so
neither one huge line nor a line of nested brackets can take the worker down.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from apps.core.errors import AppError
from apps.core.json_input import JsonInputError, loads_bounded

ROLES = {"system", "user", "assistant"}
MAX_REPORTED_ERRORS = 10
SKIP_CHUNK = 2**16


class LineError(ValueError):
    pass


def example_from(obj) -> tuple[str, list[dict]]:
    """(format, messages) of one parsed JSON line, or LineError."""
    if not isinstance(obj, dict):
        raise LineError("each line must be a JSON object")
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise LineError("'messages' must be a non-empty list")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise LineError(f"messages[{index}].role must be one of system, user, assistant")
            if not isinstance(message.get("content"), str):
                raise LineError(f"messages[{index}].content must be a string")
        if messages[-1]["role"] != "assistant":
            raise LineError("the last message must be the assistant's answer to learn")
        return "chat", [{"role": m["role"], "content": m["content"]} for m in messages]
    if "instruction" in obj or "output" in obj:
        instruction, output, extra = obj.get("instruction"), obj.get("output"), obj.get("input", "")
        if not isinstance(instruction, str) or not instruction:
            raise LineError("'instruction' must be a non-empty string")
        if not isinstance(output, str):
            raise LineError("'output' must be a string")
        if not isinstance(extra, str):
            raise LineError("'input' must be a string")
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        return "instruction", [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    raise LineError("expected a chat line {\"messages\": [...]} or an instruction line {\"instruction\", \"output\"}")


@dataclass
class Validation:
    format: str
    examples: int
    errors: list[dict]

    @property
    def ok(self) -> bool:
        return not self.errors and self.examples > 0


def _lines(f, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) of a binary file; None for a line over `limit` bytes, whose rest is skipped unread."""
    number = 0
    while raw := f.readline(limit + 1):
        number += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            while (rest := f.readline(SKIP_CHUNK)) and not rest.endswith(b"\n"):
                pass
            yield number, None
        else:
            yield number, raw


def _parse(raw: bytes | None) -> tuple[str, list[dict]]:
    """(format, messages) of one raw line, or LineError saying what is wrong with it."""
    if raw is None:
        raise LineError(f"the line is longer than {settings.AIHUB_MAX_DATASET_LINE_BYTES} bytes "
                        "(AIHUB_MAX_DATASET_LINE_BYTES)")
    try:
        value = loads_bounded(raw, max_depth=settings.AIHUB_MAX_DATASET_JSON_DEPTH)
    except JsonInputError as exc:
        raise LineError(str(exc)) from None
    return example_from(value)


def _examples(path: Path) -> Iterator[tuple[int, tuple[str, list[dict]] | LineError]]:
    """(line number, parsed example or its LineError) of each non-blank line, within the line-count limit."""
    with open(path, "rb") as f:
        for number, raw in _lines(f, settings.AIHUB_MAX_DATASET_LINE_BYTES):
            if number > settings.AIHUB_MAX_FILE_LINES:
                yield number, LineError(f"more than {settings.AIHUB_MAX_FILE_LINES} lines")
                return
            if raw is not None and not raw.strip():
                continue
            try:
                yield number, _parse(raw)
            except LineError as exc:
                yield number, exc


def validate_file(path: Path) -> Validation:
    formats, examples, errors = set(), 0, []
    for number, parsed in _examples(path):
        if isinstance(parsed, LineError):
            errors.append({"line": number, "message": str(parsed)})
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
            continue
        formats.add(parsed[0])
        examples += 1
    if len(formats) > 1:
        errors.append({"line": None, "message": "mixes chat and instruction lines; use one format per file"})
    if examples == 0 and not errors:
        errors.append({"line": None, "message": "the file holds no examples"})
    return Validation(formats.pop() if len(formats) == 1 else "", examples, errors)


def load_examples(path: Path) -> list[list[dict]]:
    """Every example's messages, under the same bounds as validation (the file may have changed since)."""
    examples = []
    for number, parsed in _examples(path):
        if isinstance(parsed, LineError):
            raise LineError(f"line {number}: {parsed}")
        examples.append(parsed[1])
    return examples


def resolve_dataset_path(raw: str) -> Path:
    """A path under AIHUB_DATASETS_ROOT, or a 400: no absolute paths elsewhere, no '..', no symlinks out."""
    if not settings.AIHUB_DATASETS_ROOT:
        raise AppError("dataset_path is disabled: the operator has not set AIHUB_DATASETS_ROOT. "
                       "Upload the dataset with POST /api/v1/files instead.", param="dataset_path",
                       code="invalid_dataset_path")
    root = Path(settings.AIHUB_DATASETS_ROOT).resolve()
    candidate = Path(raw)
    if ".." in candidate.parts:
        raise AppError("dataset_path must not contain '..'.", param="dataset_path", code="invalid_dataset_path")
    full = (candidate if candidate.is_absolute() else root / candidate)
    resolved = full.resolve()  # follows symlinks: a link pointing outside the root is caught below
    if not resolved.is_relative_to(root):
        raise AppError("dataset_path must be inside the datasets root.", param="dataset_path",
                       code="invalid_dataset_path")
    if not resolved.is_file():
        raise AppError(f"No dataset file at '{raw}' under the datasets root.", param="dataset_path",
                       code="invalid_dataset_path")
    return resolved
