"""Dataset formats (chat JSONL and instruction JSONL), validation, and safe dataset paths. No torch here.

Chat:         {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}  (ends with assistant)
Instruction:  {"instruction": "...", "input": "..."?, "output": "..."}
Both become a message list; the model learns the last assistant message.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from apps.core.errors import AppError

ROLES = {"system", "user", "assistant"}
MAX_REPORTED_ERRORS = 10


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


def validate_file(path: Path) -> Validation:
    formats, examples, errors = set(), 0, []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number > settings.AIHUB_MAX_FILE_LINES:
                errors.append({"line": number, "message": f"more than {settings.AIHUB_MAX_FILE_LINES} lines"})
                break
            if not raw.strip():
                continue
            try:
                kind, _ = example_from(json.loads(raw))
                formats.add(kind)
                examples += 1
            except (ValueError, UnicodeDecodeError) as exc:
                message = str(exc) if isinstance(exc, LineError) else f"not valid JSON: {exc}"
                errors.append({"line": number, "message": message})
                if len(errors) >= MAX_REPORTED_ERRORS:
                    break
    if len(formats) > 1:
        errors.append({"line": None, "message": "mixes chat and instruction lines; use one format per file"})
    if examples == 0 and not errors:
        errors.append({"line": None, "message": "the file holds no examples"})
    return Validation(formats.pop() if len(formats) == 1 else "", examples, errors)


def load_examples(path: Path) -> list[list[dict]]:
    with open(path, "rb") as f:
        return [example_from(json.loads(raw))[1] for raw in f if raw.strip()]


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
