"""The worker side of model commands (load, unload, detach_adapter, unload_idle), delivered on a worker's own
queue; the answer goes back through an event log (apps/core/worker_commands.py)."""
from __future__ import annotations

import logging

from apps.catalog.models import ModelEntry
from apps.core.errors import error_object
from apps.core.worker_commands import reply_done, reply_error

from . import heartbeat
from .model_manager import InsufficientMemory, ModelSpec, get_manager

logger = logging.getLogger(__name__)


def run_control(action: str, model_id: str, reply_id: str, options: dict) -> None:
    manager = get_manager()
    try:
        if action == "load":
            entry = ModelEntry.objects.get(id=model_id)
            state = manager.load(ModelSpec.from_entry(entry), keep_alive=options.get("keep_alive"),
                                 force_reload=bool(options.get("force_reload")))
            result = {"status": "loaded", "model": state}
        elif action == "unload":
            result = {"status": "unloaded" if manager.unload(model_id) else "not_loaded"}
        elif action == "detach_adapter":  # its fine-tuned model was deleted (apps/catalog/services.py)
            detached = manager.detach_adapter(options.get("base_model", ""), model_id)
            result = {"status": "detached" if detached else "not_attached"}
        elif action == "unload_idle":
            result = {"status": "unloaded", "models": manager.unload_idle(), "models_bytes": manager.used_bytes}
        else:
            raise ValueError(f"unknown action {action}")
    except InsufficientMemory as exc:
        reply_error(reply_id, exc.error)
        return
    except ModelEntry.DoesNotExist:
        reply_error(reply_id, error_object(f"The model '{model_id}' does not exist.", param="model_id",
                                           code="model_not_found"))
        return
    except Exception as exc:  # noqa: BLE001 - the caller must get an answer, not a timeout
        logger.exception("%s %s failed", action, model_id)
        reply_error(reply_id, error_object(f"{action} failed: {exc}", type="server_error",
                                           code="model_control_failed"))
        return
    reply_done(reply_id, worker=heartbeat.identity["nodename"], **result)
