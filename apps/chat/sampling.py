"""The sampling surface of a chat request as the engine takes it, and the `system_fingerprint` of its answer.

docs/api.md describes each parameter; workers/sampling.py and workers/logprobs.py honour them.
"""
from __future__ import annotations

import hashlib

from aihub_project.version import VERSION
from apps.catalog.models import ModelEntry


def sampling_params(data: dict, *, model: ModelEntry) -> dict:
    """The choices, logprobs, penalties and bias of validated request `data`, for GenerationRequest.params."""
    return {
        "n": data.get("n") or 1,
        "logprobs": bool(data.get("logprobs")),
        "top_logprobs": data.get("top_logprobs") or 0,
        "presence_penalty": data.get("presence_penalty") or 0.0,
        "frequency_penalty": data.get("frequency_penalty") or 0.0,
        "logit_bias": data.get("logit_bias") or {},
        "user": data.get("user") or "",
        "system_fingerprint": system_fingerprint(model),
    }


def system_fingerprint(model: ModelEntry) -> str:
    """A short hash of what shapes the model's answers on this deployment: the model's id, its weights (where
    they came from, where they are, their size), its adapter, the precision and quantization it loads with,
    and the hub's version. The same for every request until one of them changes.

    The device kind is not in it: a request is fingerprinted before any worker takes it (the first streamed
    chunk carries it), and the workers of one deployment may differ.
    """
    material = "\n".join(str(part) for part in (
        VERSION, model.id, model.source, model.source_ref, model.path, model.size_bytes, model.parameter_count,
        model.base_model, model.adapter_path, model.dtype, model.quantization))
    return "fp_" + hashlib.sha256(material.encode()).hexdigest()[:10]
