"""Keeps models loaded between tasks in the worker process that owns the device.

The foundation keeps the most recently used models up to MAX_CONCURRENT_MODELS;
memory budgets and idle unload build on this (docs/models.md).
"""
from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict

from .engine import LoadedModel, load_model, pick_device

logger = logging.getLogger(__name__)


class ModelManager:
    def __init__(self, *, max_models: int, device_preference: str = "auto"):
        self.max_models = max_models
        self.device = pick_device(device_preference)
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, *, model_id: str, path: str, context_length: int) -> LoadedModel:
        with self._lock:
            loaded = self._loaded.get(model_id)
            if loaded is not None:
                self._loaded.move_to_end(model_id)
                return loaded
            while len(self._loaded) >= self.max_models:
                self._evict_oldest()
            loaded = load_model(model_id=model_id, path=path, context_length=context_length, device=self.device)
            self._loaded[model_id] = loaded
            return loaded

    def loaded_ids(self) -> list[str]:
        return list(self._loaded)

    def _evict_oldest(self) -> None:
        model_id, _ = self._loaded.popitem(last=False)
        gc.collect()
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
        logger.info("unloaded %s", model_id)


_manager: ModelManager | None = None


def get_manager() -> ModelManager:
    """One manager per worker process (created lazily, after the prefork fork)."""
    global _manager
    if _manager is None:
        from django.conf import settings

        _manager = ModelManager(max_models=settings.MAX_CONCURRENT_MODELS, device_preference=settings.AIHUB_DEVICE)
    return _manager
