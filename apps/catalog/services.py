"""Registering models in the catalog. No torch here: facts come from the files."""
from __future__ import annotations

import json
from pathlib import Path

from apps.core.errors import AppError

from .footprint import safetensors_parameter_counts
from .models import KIND_CAPABILITIES, ModelEntry, ModelKind, ModelSource, Quantization


def model_directory_facts(path: Path) -> tuple[int, int]:
    """(context length, weight bytes) of a transformers model directory."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise AppError(f"{path} has no config.json; is it a transformers model directory?", param="path")
    config = json.loads(config_file.read_text())
    context = config.get("max_position_embeddings") or config.get("n_positions") or 2048
    size = sum(f.stat().st_size for f in path.glob("*.safetensors")) or sum(
        f.stat().st_size for f in path.glob("*.bin"))
    return int(context), int(size)


def model_register(*, model_id: str, path: Path, kind: str = ModelKind.CHAT, source: str = ModelSource.DIRECTORY,
                   source_ref: str = "", context_length: int | None = None, dtype: str = "auto",
                   quantization: str = Quantization.NONE, capabilities: list[str] | None = None) -> ModelEntry:
    """Create or update the catalog entry for a model directory."""
    path = Path(path).resolve()
    detected_context, size = model_directory_facts(path)
    parameters, quantisable = safetensors_parameter_counts(path)
    entry, _ = ModelEntry.objects.update_or_create(id=model_id, defaults={
        "kind": kind,
        "capabilities": capabilities or KIND_CAPABILITIES[ModelKind(kind)],
        "source": source,
        "source_ref": source_ref,
        "path": str(path),
        "context_length": context_length or detected_context,
        "dtype": dtype,
        "quantization": quantization,
        "parameter_count": parameters,
        "quantisable_parameter_count": quantisable,
        "size_bytes": size,
        "enabled": True,
    })
    return entry
