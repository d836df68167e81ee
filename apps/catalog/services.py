"""Writes of the catalog: registering models, their visibility, removing fine-tunes. No torch here."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from apps.core.errors import AppError
from apps.core.worker_commands import command_send

from .footprint import ctranslate2_parameter_count, safetensors_parameter_counts
from .models import KIND_CAPABILITIES, ModelEntry, ModelKind, ModelSource, Pooling, Quantization, Visibility
from .selectors import model_get_for_change
from .tool_support import directory_chat_template, tool_support
from .worker_registry import live_workers

logger = logging.getLogger(__name__)


def model_directory_facts(path: Path) -> tuple[int, int]:
    """(context length, weight bytes) of a transformers model directory."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise AppError(f"{path} has no config.json; is it a transformers model directory?", param="path")
    config = json.loads(config_file.read_text())
    text_config = config.get("text_config") or {}  # a vision-language model's language half
    context = (config.get("max_position_embeddings") or config.get("n_positions")
               or text_config.get("max_position_embeddings") or 2048)
    size = sum(f.stat().st_size for f in path.glob("*.safetensors")) or sum(
        f.stat().st_size for f in path.glob("*.bin"))
    return int(context), int(size)


def is_vision_directory(path: Path) -> bool:
    """A vision-language model directory: its config has a vision tower and a processor config sits beside it
    (what AutoModelForImageTextToText and AutoProcessor load)."""
    config = _json_or(path / "config.json", {})
    return "vision_config" in config and any(
        (path / name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))


def embedding_directory_facts(path: Path) -> dict:
    """Dimensions, pooling, normalisation and sequence length of an embedding model directory.

    A sentence-transformers directory says them in `modules.json`, `1_Pooling/config.json` and
    `sentence_bert_config.json` (whose max_seq_length, not the position table, is what the model was trained
    on); a plain transformers encoder gets its hidden size, mean pooling and normalisation, the common recipe.
    """
    config = json.loads((path / "config.json").read_text())
    modules = _json_or(path / "modules.json", [])
    pooling_dir = next((m.get("path") for m in modules if m.get("type", "").endswith(".Pooling")), "1_Pooling")
    pooling_config = _json_or(path / (pooling_dir or "1_Pooling") / "config.json", {})
    if pooling_config.get("pooling_mode_cls_token"):
        pooling = Pooling.CLS
    elif pooling_config.get("pooling_mode_lasttoken"):
        pooling = Pooling.LAST
    elif any(pooling_config.get(k) for k in ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                                              "pooling_mode_weightedmean_tokens")):
        raise AppError(f"{path}: only mean, cls and last-token pooling are supported.", param="pooling")
    else:
        pooling = Pooling.MEAN
    facts = {
        "embedding_dimensions": int(pooling_config.get("word_embedding_dimension") or config["hidden_size"]),
        "pooling": pooling,
        "normalize_embeddings": not modules or any(m.get("type", "").endswith(".Normalize") for m in modules),
    }
    max_seq_length = _json_or(path / "sentence_bert_config.json", {}).get("max_seq_length")
    if max_seq_length:
        facts["context_length"] = int(max_seq_length)
    return facts


# Whisper's vocabulary: 51864 tokens for the English-only models, 51865 (51866 for large-v3) for multilingual ones.
WHISPER_MULTILINGUAL_VOCABULARY = 51865
WHISPER_MAX_TEXT_TOKENS = 448  # its decoder's positions


def audio_directory_facts(path: Path, kind: str) -> dict:
    """What the catalog keeps of a Whisper (CTranslate2) or a hibari voice directory; no runtime is loaded.

    Whisper: model.bin, config.json and vocabulary.txt as ct2-transformers-converter writes them; its parameters
    are counted from model.bin's header, and a multilingual vocabulary adds the `translation` capability.
    A speech model is a directory of ONNX voices (hibari's assets): one byte per parameter (int8).
    """
    if kind == ModelKind.AUDIO:
        model_bin, vocabulary = path / "model.bin", path / "vocabulary.txt"
        if not (model_bin.is_file() and vocabulary.is_file()):
            raise AppError(f"{path} has no model.bin and vocabulary.txt; is it a CTranslate2 Whisper directory?",
                           param="path")
        with open(vocabulary, encoding="utf-8") as f:
            multilingual = sum(1 for _ in f) >= WHISPER_MULTILINGUAL_VOCABULARY
        capabilities = KIND_CAPABILITIES[ModelKind.AUDIO] + (["translation"] if multilingual else [])
        return {"parameter_count": ctranslate2_parameter_count(model_bin), "size_bytes": model_bin.stat().st_size,
                "context_length": WHISPER_MAX_TEXT_TOKENS, "capabilities": capabilities}
    voices = list(path.glob("*.onnx"))
    if not (path / "voices.json").is_file() or not voices:
        raise AppError(f"{path} has no voices.json and ONNX voice; is it hibari's assets directory?", param="path")
    size = sum(f.stat().st_size for f in voices)
    return {"parameter_count": size, "size_bytes": size, "context_length": settings.AIHUB_SPEECH_MAX_CHARS,
            "capabilities": KIND_CAPABILITIES[ModelKind.SPEECH]}


def _json_or(file: Path, default):
    return json.loads(file.read_text()) if file.is_file() else default


def model_register(*, model_id: str, path: Path, kind: str = ModelKind.CHAT, source: str = ModelSource.DIRECTORY,
                   source_ref: str = "", context_length: int | None = None, dtype: str = "auto",
                   quantization: str = Quantization.NONE, capabilities: list[str] | None = None,
                   owner=None, base_model: str = "", adapter_path: str = "",
                   supports_dimensions: bool = False) -> ModelEntry:
    """Create or update the catalog entry for a model directory.

    With an owner (a fine-tune) the entry is private to them, written in the same statement as the rest:
    a fine-tune must never be seen, even for a moment, as an ownerless (public) operator model.
    """
    path = Path(path).resolve()
    vectors = {"embedding_dimensions": None, "pooling": "", "normalize_embeddings": True}
    if kind in (ModelKind.AUDIO, ModelKind.SPEECH):
        audio = audio_directory_facts(path, kind)
        detected_context, size, parameters, quantisable = (audio["context_length"], audio["size_bytes"],
                                                           audio["parameter_count"], 0)
        capabilities = capabilities or audio["capabilities"]
        chat_template = None
    else:
        detected_context, size = model_directory_facts(path)
        parameters, quantisable = safetensors_parameter_counts(path)
        chat_template = directory_chat_template(path)
        if kind == ModelKind.CHAT and is_vision_directory(path):
            kind = ModelKind.VISION  # a vision-language model also chats; its kind says it takes images
    if kind == ModelKind.EMBEDDING:
        vectors = embedding_directory_facts(path)
        detected_context = vectors.pop("context_length", detected_context)
    entry, _ = ModelEntry.objects.update_or_create(id=model_id, defaults={
        **vectors,
        "supports_dimensions": supports_dimensions and kind == ModelKind.EMBEDDING,
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
        "owner": owner,
        "visibility": Visibility.PUBLIC if owner is None else Visibility.PRIVATE,
        "base_model": base_model,
        "adapter_path": adapter_path,
        # An adapter's `path` is its base's directory: it runs with the base's tokenizer and template.
        **tool_support(chat_template),
    })
    return entry


@transaction.atomic
def model_visibility_set(*, user, model_id: str, key=None, visibility: str | None = None,
                         shared_with: list[str] | None = None) -> ModelEntry:
    """The owner (or staff with an admin key) makes their model private, shared with named users, or public.

    `shared_with` replaces the list of users (it counts only while the visibility is `shared`).
    """
    entry = model_get_for_change(user=user, model_id=model_id, key=key)
    if shared_with is not None:
        names = set(shared_with)
        users = list(get_user_model().objects.filter(username__in=names, is_active=True))
        unknown = sorted(names - {u.username for u in users})
        if unknown:
            raise AppError(f"shared_with: no such user: {', '.join(unknown)}.", param="shared_with",
                           code="user_not_found")
        entry.shared_with.set(users)
    if visibility is not None:
        entry.visibility = visibility
        entry.save(update_fields=["visibility"])
    return entry


def model_delete(*, user, model_id: str, key=None) -> None:
    """DELETE /models/{id}: the owner (or staff with an admin key) removes a fine-tune; operator models stay."""
    entry = model_get_for_change(user=user, model_id=model_id, key=key)
    model_remove(model_id=entry.id)


def model_remove(*, model_id: str) -> bool:
    """Remove a fine-tuned model from the catalog, from every worker that serves it, and from disk.

    No permission check: callers decide (model_delete, training_job_delete). False if there was nothing to
    remove. A request already queued for the model fails on its worker with model_not_found (the entry is
    gone when it re-reads it); workers that hold its base are told to detach the adapter, without waiting
    for them: a worker that misses the message only keeps some memory, as its requests find no entry.
    """
    with transaction.atomic():
        entry = ModelEntry.objects.select_for_update().filter(id=model_id).exclude(adapter_path="").first()
        if entry is None:
            return False
        base_model, adapter_path = entry.base_model, entry.adapter_path
        entry.delete()
        # Files and workers only once the row is surely gone (a rollback would leave it served).
        transaction.on_commit(lambda: _adapter_unserve(model_id=model_id, base_model=base_model,
                                                       adapter_path=adapter_path))
    return True


def _adapter_unserve(*, model_id: str, base_model: str, adapter_path: str) -> None:
    for worker in live_workers():
        if base_model in worker.loaded:
            # Fire and forget: nobody reads the reply, whose log expires like any other.
            command_send("detach_adapter", queue=worker.control_queue, model_id=model_id,
                         options={"base_model": base_model})
    directory = Path(adapter_path).resolve()
    adapters_root = (Path(settings.AIHUB_MODEL_STORE) / "adapters").resolve()
    # The path comes from the database: only ever delete inside the adapter store.
    if directory.parent == adapters_root:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        logger.warning("not deleting %s for %s: outside %s", directory, model_id, adapters_root)
