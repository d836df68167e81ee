"""Automatic model choice and worker choice (docs/routing.md). Pure functions: unit-tested rule by rule.

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

import celeryconfig
from apps.core.errors import AppError

from .workers import WorkerState

CODE_PATTERNS = re.compile(
    r"```|^\s*(def|class|import|from \S+ import|#include|public static|function|const|let|fn|package)\b"
    r"|\bSELECT\b.+\bFROM\b|[;{}]\s*$|=>|\bTraceback \(most recent call last\)",
    re.MULTILINE | re.IGNORECASE,
)
CODE_WORDS = re.compile(r"\b(code|function|python|javascript|typescript|rust|golang|sql|regex|bug|compile)\b",
                        re.IGNORECASE)


def task_type(messages: list[dict], *, has_images: bool = False) -> str:
    if has_images:
        return "vision"
    text = "\n".join(m["content"] for m in messages if m["role"] == "user")
    if CODE_PATTERNS.search(text) or len(CODE_WORDS.findall(text)) >= 2:
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
