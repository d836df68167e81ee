"""Automatic model choice and worker choice (docs/models.md, "Routing"). Pure functions: unit-tested rule by rule.

Model (for `model: "auto"` or an omitted model):
 1. task type from the messages: image parts -> vision, code-like text -> code, else chat;
 2. candidates: enabled models with that capability (code falls back to chat models);
 3. drop candidates that fit no live worker (not loaded anywhere and bigger than every worker's free memory);
 4. the user's preferred model wins if it is a candidate;
 5. otherwise rank: loaded somewhere (no swap) first, then lower error rate, then faster
    (ms per token from stored timings), then id.

Worker (for any request): the worker that holds the model, else the one with the most
free memory, else (no heartbeats) the shared inference queue.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from django.conf import settings

import celeryconfig
from apps.core.errors import AppError

from .worker_registry import WorkerState

# Task classification reads user text, so it must cost time linear in that text and bounded:
# a backtracking pattern such as `^\s*(def|...)` under MULTILINE re-scans every following
# blank line from each line start, and 20 KB of newlines held the GIL (so the whole web
# process) for 25 s. Lines are checked one by one with plain string operations, and only the
# first AIHUB_ROUTING_SAMPLE_CHARS characters of user text are read.
CODE_FENCE = "```"
CODE_MARKERS = ("=>",)
CODE_LINE_STARTS = ("def", "class", "import", "#include", "public static", "function", "const", "let", "fn",
                    "package")
CODE_LINE_ENDS = (";", "{", "}")
TRACEBACK = "traceback (most recent call last)"
CODE_WORDS = frozenset({"code", "function", "python", "javascript", "typescript", "rust", "golang", "sql",
                        "regex", "bug", "compile"})
WORD = re.compile(r"\w+")  # one pass, no backtracking: maximal runs of word characters


def _is_word_char(text: str, index: int) -> bool:
    return 0 <= index < len(text) and (text[index].isalnum() or text[index] == "_")


def _word_at(text: str, start: int, word: str) -> bool:
    """`word` occurs at `start` as a whole word (regex `\bword\b`)."""
    end = start + len(word)
    return (text.startswith(word, start) and not _is_word_char(text, start - 1)
            and not (word[-1].isalnum() and _is_word_char(text, end)))


def _find_word(text: str, word: str, start: int = 0) -> int:
    """Index of the first whole-word `word` at or after `start`, or -1 (str.find steps, linear)."""
    index = text.find(word, start)
    while index != -1 and not _word_at(text, index, word):
        index = text.find(word, index + 1)
    return index


def _code_line(line: str) -> bool:
    """The per-line rules: a code keyword starting the line, `SELECT … FROM`, a trailing `;`, `{` or `}`."""
    stripped = line.lstrip()
    if not stripped:
        return False
    if any(_word_at(stripped, 0, start) for start in CODE_LINE_STARTS):
        return True
    words = stripped.split(maxsplit=2)
    if len(words) == 3 and words[0] == "from" and _word_at(words[2], 0, "import") and stripped.startswith(
            f"from {words[1]} import"):
        return True
    select = _find_word(line, "select")
    if select != -1 and _find_word(line, "from", select + len("select") + 1) != -1:
        return True
    return line.rstrip().endswith(CODE_LINE_ENDS)


def _user_text_sample(messages: list[dict], limit: int) -> str:
    """The users' messages joined by newlines, cut at `limit` characters, without joining everything first."""
    parts, size = [], 0
    for message in messages:
        if message["role"] != "user":
            continue
        part = ("\n" if parts else "") + message["content"][:limit - size]
        parts.append(part)
        size += len(part)
        if size >= limit:
            break
    return "".join(parts)[:limit]


def task_type(messages: list[dict], *, has_images: bool = False) -> str:
    if has_images:
        return "vision"
    text = _user_text_sample(messages, settings.AIHUB_ROUTING_SAMPLE_CHARS).lower()
    if CODE_FENCE in text or any(marker in text for marker in CODE_MARKERS):
        return "code"
    traceback = _find_word(text, TRACEBACK)
    if traceback != -1 or any(_code_line(line) for line in text.split("\n")):
        return "code"
    if sum(1 for word in WORD.findall(text) if word in CODE_WORDS) >= 2:
        return "code"
    return "chat"


@dataclass(frozen=True)
class Candidate:
    model_id: str
    capabilities: tuple[str, ...]
    bytes_by_device: dict  # device type -> estimated bytes


@dataclass(frozen=True)
class Performance:
    error_rate: float
    ms_per_token: float | None


@dataclass(frozen=True)
class Route:
    model_id: str
    queue: str
    worker: str | None
    reason: str


def _fits_somewhere(candidate: Candidate, workers: list[WorkerState]) -> bool:
    if not workers:
        return True  # nothing known: let the worker decide
    return any(candidate.model_id in w.loaded or candidate.bytes_by_device[w.device_type] <= w.free_bytes
               for w in workers)


def choose_model(*, task: str, candidates: list[Candidate], workers: list[WorkerState],
                 performance: dict[str, Performance], preferred: str | None) -> tuple[str, str]:
    """(model id, reason)."""
    matching = [c for c in candidates if task in c.capabilities]
    reason = f"task={task}"
    if not matching and task == "code":
        matching = [c for c in candidates if "chat" in c.capabilities]
        reason += " (no code model, using chat)"
    if not matching:
        raise AppError(f"No enabled model can handle a {task} request.", param="model", code="model_not_found",
                       status=404)
    fitting = [c for c in matching if _fits_somewhere(c, workers)]
    if not fitting:
        raise AppError(f"No {task} model fits the free memory of any worker right now.", status=507,
                       type="server_error", param="model", code="insufficient_memory")
    if preferred and any(c.model_id == preferred for c in fitting):
        return preferred, f"{reason}; user preference"
    loaded = {model_id for w in workers for model_id in w.loaded}
    unknown = Performance(error_rate=0.0, ms_per_token=None)

    def rank(c: Candidate):
        perf = performance.get(c.model_id, unknown)
        speed = perf.ms_per_token if perf.ms_per_token is not None else float("inf")
        return (c.model_id not in loaded, round(perf.error_rate, 2), speed, c.model_id)

    best = min(fitting, key=rank)
    why = "already loaded" if best.model_id in loaded else "fits free memory"
    perf = performance.get(best.model_id)
    if perf and perf.ms_per_token is not None:
        why += f", {perf.ms_per_token:.0f} ms/token, {perf.error_rate:.0%} errors"
    return best.model_id, f"{reason}; {why}; {len(fitting)} candidate(s)"


def choose_worker(*, model_id: str, bytes_by_device: dict, workers: list[WorkerState]) -> tuple[str, str | None, str]:
    """(queue, worker hostname or None, reason)."""
    holders = [w for w in workers if model_id in w.loaded]
    if holders:
        # Several holders: the one with the most free memory (least likely to swap for the next request).
        worker = max(holders, key=lambda w: w.free_bytes)
        return worker.control_queue, worker.hostname, f"{worker.hostname} holds the model"
    if workers:
        worker = max(workers, key=lambda w: w.free_bytes - bytes_by_device[w.device_type])
        return worker.control_queue, worker.hostname, f"{worker.hostname} has the most free memory"
    return celeryconfig.INFERENCE_QUEUE, None, "no worker heartbeat; shared queue"
