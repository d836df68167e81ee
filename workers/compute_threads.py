"""One team of OpenMP threads per inference worker: the batching engine's. Every other thread runs torch inline.

torch's CPU wheels compute in parallel with libgomp, which gives every thread that runs a parallel op a team
of threads of its own, kept for that thread's life. Once a process holds more OpenMP threads than CPUs,
libgomp makes a waiting thread spin about 100 times instead of about 300,000 before it sleeps, so every
parallel region of every team then pays for waking its threads from the kernel. An inference worker has
many threads that touch torch: Celery's task threads (a model load, an image's pixels made tensors), the
embedding and audio threads, and the engine's. On 2 cores, one other thread that had run a single parallel
op made an image request's `generate` take 685 ms instead of 538, one thread after the other in one
process (docs/models.md "One team of compute threads").

So the engine's thread, which runs every decoding step, computes with torch's full thread count, and every
other thread of the worker with one thread: inline, in no team. What those threads compute (loading and
packing weights, an image's tensors) is small beside the steps, or a load, which takes longer on one core
but leaves the running batch its speed. An embedding batch is compute the size of a step, and must not
lose half its speed: it runs `with_team`, in a thread of its own whose team ends with it (libgomp counts
a team until its thread exits), so two teams exist only while both compute.

torch's thread count is per thread once set, but a thread that never sets it takes the last count set
anywhere, so each kind of thread sets its own when it starts work.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")

# torch's default count (the cores), read when this module is first imported: before any thread here set 1.
ENGINE_THREADS = torch.get_num_threads()


def for_engine() -> None:
    """In the engine's thread: its ops use ENGINE_THREADS threads."""
    torch.set_num_threads(ENGINE_THREADS)


def inline() -> None:
    """In any other thread of an inference worker: its ops run in this thread alone, in no OpenMP team."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def with_team(work: Callable[[], T]) -> T:
    """`work()`'s result, computed with ENGINE_THREADS threads in a thread that ends with it, so its OpenMP team
    ends too; exceptions are raised here."""
    outcome: dict = {}

    def run() -> None:
        torch.set_num_threads(ENGINE_THREADS)
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=f"{threading.current_thread().name}-compute", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
