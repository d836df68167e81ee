"""Load and unload commands to the worker that holds (or will hold) a model (POST /models/load, /models/unload).

The answer waits for the worker (a load can take seconds), so the callers are
async. The command goes to the worker's own queue; its answer comes back
through an event log, like tokens do (apps/core/worker_commands.py).
"""
from __future__ import annotations

from django.conf import settings

from apps.core.errors import AppError
from apps.core.worker_commands import command

from .placement import choose_worker
from .worker_registry import alive_workers


async def _command(action: str, worker, entry, options: dict) -> dict:
    return await command(action, queue=worker.control_queue, model_id=entry.id, options=options,
                         timeout=settings.AIHUB_CONTROL_TIMEOUT_SECONDS)


async def model_command(action: str, entry, *, keep_alive=None, force_reload: bool = False,
                        worker_name: str | None = None) -> dict:
    """Load on one worker (named, holding it, or with the most free memory) or unload everywhere.

    Returns {"status", "workers", "reason", "model"?}; shared by the API and the admin actions.
    """
    workers = await alive_workers()
    if action == "unload":
        holders = [w for w in workers if entry.id in w.loaded]
        results = [await _command("unload", worker, entry, {}) for worker in holders]
        unloaded = [r["worker"] for r in results if r["status"] == "unloaded"]
        return {"status": "unloaded" if unloaded else "not_loaded", "workers": unloaded}
    if not workers:
        raise AppError("No inference worker is running.", status=503, type="server_error", code="no_worker")
    if worker_name is not None:
        # An operator may place a model on a given worker (e.g. the GPU with the room).
        worker = next((w for w in workers if w.hostname == worker_name), None)
        if worker is None:
            raise AppError(f"No live worker named {worker_name!r}.", status=404, param="worker",
                           code="worker_not_found")
        reason = "worker chosen by the caller"
    else:
        _, hostname, reason = choose_worker(model_id=entry.id, workers=workers,
                                            bytes_by_device=entry.estimated_bytes_by_device())
        worker = next(w for w in workers if w.hostname == hostname)
    result = await _command("load", worker, entry, {"keep_alive": keep_alive, "force_reload": force_reload})
    return {"status": result["status"], "workers": [result["worker"]], "worker": result["worker"],
            "model": result["model"], "reason": reason}
