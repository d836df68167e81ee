"""The worker's ModelManager: owns the device memory of its process (docs/models.md).

- Loads on demand and keeps models loaded between tasks.
- Before a load, evicts least-recently-used idle models until the estimate fits
  the budget (`AIHUB_GPU_MEMORY_BUDGET`) and the count fits
  `MAX_CONCURRENT_MODELS`; when only models serving requests stand in the way,
  waits for them to finish (`AIHUB_MODEL_SWAP_WAIT_SECONDS`); a model that cannot
  fit even then is refused with InsufficientMemory, never loaded into an
  out-of-memory crash.
- Unloads models idle past their keep-alive (`MODEL_UNLOAD_TIMEOUT`, or the
  request's `keep_alive`: seconds, -1 pins, 0 unloads after the request).
- Accounts each loaded model at its measured size (its tensors), not the estimate,
  and counts the KV cache its batching engine may still grow to: a load leaves
  room for the running requests, and the engine admits a request only if its
  cache fits what the models leave of the budget (workers/batching.py).

One lock guards the bookkeeping; generation runs outside it, in the engine,
protected from eviction by an in-use count, so the idle reaper and control tasks
never wait for a generation to finish.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

from apps.catalog.footprint import estimate_bytes
from apps.core.errors import error_object

from .batching import BatchEngine
from .engine import LoadedModel, detach_adapter, load_model, pick_device
from .memory import device_memory, free_cached, module_bytes, resolve_budget

logger = logging.getLogger(__name__)

PINNED = -1


class InsufficientMemory(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.error = error_object(message, type="server_error", param="model", code="insufficient_memory")


@dataclass(frozen=True)
class ModelSpec:
    """What the manager needs to know of a catalog entry."""

    model_id: str
    path: str
    context_length: int
    parameter_count: int
    quantisable_count: int = 0
    dtype: str = "auto"
    quantization: str = "none"
    kind: str = "chat"

    @classmethod
    def from_entry(cls, entry) -> "ModelSpec":
        return cls(entry.id, entry.path, entry.context_length, entry.parameter_count,
                   entry.quantisable_parameter_count, entry.dtype, entry.quantization, entry.kind)


@dataclass
class Slot:
    loaded: LoadedModel
    size_bytes: int
    keep_alive: float
    loaded_at: float = field(default_factory=time.time)
    last_used_at: float = field(default_factory=time.time)
    in_use: int = 0

    @property
    def expires_at(self) -> float | None:
        return None if self.keep_alive == PINNED else self.last_used_at + self.keep_alive


class ModelManager:
    def __init__(self, *, max_models: int, budget: str | float, default_keep_alive: float,
                 device_preference: str = "auto", max_batch_size: int = 16, max_batch_tokens: int = 2048,
                 swap_wait_seconds: float = 0.0):
        self.max_models = max_models
        self.swap_wait_seconds = swap_wait_seconds
        self.default_keep_alive = default_keep_alive
        self.device = pick_device(device_preference)
        self.budget_bytes = resolve_budget(budget, device_memory(self.device)["memory_total_bytes"])
        self._slots: OrderedDict[str, Slot] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)  # notified when a model's last request ends (_make_room)
        self.engine = BatchEngine(max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
                                  cache_budget=lambda: self.budget_bytes - self.used_bytes,
                                  on_out_of_memory=self.free_after_oom)
        # Called after every load and unload, so status never lags a change (the heartbeat sets it).
        self.on_change = lambda: None

    # -- what callers use -------------------------------------------------

    @contextmanager
    def use(self, spec: ModelSpec, *, keep_alive: float | None = None):
        """The loaded model for one request; keep_alive 0 unloads it afterwards."""
        with self._lock:
            slot = self._ensure_loaded(spec, keep_alive=keep_alive, force_reload=False)
            slot.in_use += 1
        try:
            yield slot.loaded
        finally:
            with self._lock:
                slot.in_use -= 1
                slot.last_used_at = time.time()
                if slot.in_use == 0:
                    if slot.keep_alive == 0:
                        self._unload(spec.model_id, reason="keep_alive 0")
                    self._idle.notify_all()

    def load(self, spec: ModelSpec, *, keep_alive: float | None = None, force_reload: bool = False) -> dict:
        with self._lock:
            slot = self._ensure_loaded(spec, keep_alive=keep_alive, force_reload=force_reload)
            return self._describe(spec.model_id, slot)

    def unload(self, model_id: str) -> bool:
        with self._lock:
            slot = self._slots.get(model_id)
            if slot is None:
                return False
            if slot.in_use:
                # Unloading now would pull the model from under a generation; it goes once idle.
                slot.keep_alive = 0
                return True
            self._unload(model_id, reason="requested")
            return True

    def detach_adapter(self, base_id: str, adapter_id: str) -> bool:
        """Drop a deleted fine-tune's adapter from its loaded base; the base stays for other requests.

        It waits for the engine's current step (the model's lock); rows still asking for the adapter then end.
        """
        with self._lock:
            slot = self._slots.get(base_id)
            return slot is not None and detach_adapter(slot.loaded, adapter_id)

    def unload_idle(self) -> list[str]:
        """Make room for training on the same device: every model not in use and not pinned goes."""
        with self._lock:
            idle = [m for m, s in self._slots.items() if s.in_use == 0 and s.keep_alive != PINNED]
            for model_id in idle:
                self._unload(model_id, reason="room for training")
            return idle

    def unload_expired(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        with self._lock:
            expired = [model_id for model_id, slot in self._slots.items()
                       if slot.in_use == 0 and slot.expires_at is not None and slot.expires_at <= now]
            for model_id in expired:
                self._unload(model_id, reason="idle")
            return expired

    def free_after_oom(self) -> None:
        free_cached(self.device)

    @property
    def used_bytes(self) -> int:
        # A copy: the engine thread reads this while a task thread may be loading a model.
        return sum(slot.size_bytes for slot in list(self._slots.values()))

    def snapshot(self) -> dict:
        with self._lock:
            memory = device_memory(self.device)
            return {
                **memory,
                "budget_bytes": self.budget_bytes,
                "models_bytes": self.used_bytes,
                "max_models": self.max_models,
                "loaded_models": [self._describe(model_id, slot) for model_id, slot in self._slots.items()],
                "batch": self.engine.stats(),
            }

    # -- internals --------------------------------------------------------

    def _describe(self, model_id: str, slot: Slot) -> dict:
        return {"id": model_id, "size_bytes": slot.size_bytes, "loaded_at": slot.loaded_at,
                "last_used_at": slot.last_used_at, "expires_at": slot.expires_at, "in_use": slot.in_use,
                "load_seconds": round(slot.loaded.load_seconds, 3)}

    def _keep_alive(self, keep_alive: float | None) -> float:
        return self.default_keep_alive if keep_alive is None else (PINNED if keep_alive < 0 else keep_alive)

    def _ensure_loaded(self, spec: ModelSpec, *, keep_alive: float | None, force_reload: bool) -> Slot:
        slot = self._slots.get(spec.model_id)
        if slot is not None and force_reload and slot.in_use == 0:
            self._unload(spec.model_id, reason="force_reload")
            slot = None
        if slot is not None:
            self._slots.move_to_end(spec.model_id)
            if keep_alive is not None:
                slot.keep_alive = self._keep_alive(keep_alive)
            slot.last_used_at = time.time()
            return slot
        estimate = estimate_bytes(parameter_count=spec.parameter_count, quantisable_count=spec.quantisable_count,
                                  dtype=spec.dtype, quantization=spec.quantization, device_type=self.device.type)
        self._make_room(spec.model_id, estimate)
        if spec.model_id in self._slots:  # loaded by another thread while _make_room waited (the lock released)
            return self._ensure_loaded(spec, keep_alive=keep_alive, force_reload=False)
        loaded = load_model(model_id=spec.model_id, path=spec.path, context_length=spec.context_length,
                            device=self.device, dtype=spec.dtype, quantization=spec.quantization, kind=spec.kind,
                            parameter_count=spec.parameter_count)
        size = loaded.size_bytes if loaded.size_bytes is not None else module_bytes(loaded.model)
        slot = Slot(loaded, size, self._keep_alive(keep_alive))
        self._slots[spec.model_id] = slot
        self.on_change()
        logger.info("%s: %d bytes measured (estimate %d); %d of %d budget bytes used", spec.model_id,
                    slot.size_bytes, estimate, self.used_bytes, self.budget_bytes)
        return slot

    def _make_room(self, model_id: str, estimate: int) -> None:
        if estimate > self.budget_bytes:
            raise InsufficientMemory(
                f"The model '{model_id}' needs about {estimate / 2**20:.0f} MiB, more than this worker's whole "
                f"memory budget ({self.budget_bytes / 2**20:.0f} MiB).")
        deadline, waiting = time.monotonic() + self.swap_wait_seconds, False
        while self._slots:
            cache = self.engine.reserved_bytes()
            if self.used_bytes + cache + estimate <= self.budget_bytes and len(self._slots) < self.max_models:
                return
            evictable = [m for m, s in self._slots.items() if s.in_use == 0 and s.keep_alive != PINNED]
            if evictable:  # least recently used first
                self._unload(evictable[0], reason="evicted for " + model_id)
                continue
            # Every model left is pinned or serving requests. One that serves is free within seconds, when its
            # requests end: wait for that (the lock is released meanwhile) rather than refuse at once.
            remaining = deadline - time.monotonic()
            if remaining > 0 and any(slot.keep_alive != PINNED for slot in self._slots.values()):
                if not waiting:
                    logger.info("%s waits up to %.0f s for a model in use to finish its requests (%s)", model_id,
                                remaining, ", ".join(self._slots))
                    waiting = True
                self._idle.wait(timeout=remaining)
                continue
            busy = ", ".join(self._slots)
            if len(self._slots) >= self.max_models:  # the count, not the memory, is what is full
                raise InsufficientMemory(
                    f"The model '{model_id}' cannot load: this worker holds at most {self.max_models} models "
                    f"(MAX_CONCURRENT_MODELS) and the loaded ones ({busy}) are pinned or in use.")
            raise InsufficientMemory(
                f"The model '{model_id}' needs about {estimate / 2**20:.0f} MiB; "
                f"{(self.budget_bytes - self.used_bytes - cache) / 2**20:.0f} MiB of the budget is free (the "
                f"running requests' cache holds {cache / 2**20:.0f} MiB) and the loaded models ({busy}) are "
                "pinned or in use.")

    def _unload(self, model_id: str, *, reason: str) -> None:
        slot = self._slots.pop(model_id)
        del slot
        free_cached(self.device)
        self.on_change()
        logger.info("unloaded %s (%s)", model_id, reason)


_manager: ModelManager | None = None
_manager_lock = threading.Lock()


def get_manager() -> ModelManager:
    """One manager per worker process (created lazily, after the prefork fork)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            from django.conf import settings

            _manager = ModelManager(max_models=settings.MAX_CONCURRENT_MODELS,
                                    budget=settings.AIHUB_GPU_MEMORY_BUDGET,
                                    default_keep_alive=settings.MODEL_UNLOAD_TIMEOUT,
                                    device_preference=settings.AIHUB_DEVICE,
                                    max_batch_size=settings.AIHUB_MAX_BATCH_SIZE,
                                    max_batch_tokens=settings.AIHUB_MAX_BATCH_TOKENS,
                                    swap_wait_seconds=settings.AIHUB_MODEL_SWAP_WAIT_SECONDS)
        return _manager
