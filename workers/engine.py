"""The model runtime: load a catalog entry, put adapters on it (torch lives here; generation is in batching.py)."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

from .packed_linear import use_packed_linear
from .vision_processor import load_processor

logger = logging.getLogger(__name__)


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


@dataclass
class LoadedModel:
    model_id: str
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    context_length: int
    load_seconds: float
    adapters: set = field(default_factory=set)
    # Held by each forward pass of the batching engine and by adapter changes, which may replace `model`.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # The batching engine's reusable prompt prefix, per adapter (None: the base); see workers/batching.py.
    prefixes: dict = field(default_factory=dict, repr=False)
    # Each token id's text and bytes, for logprobs (workers/logprobs.py), made when a request first asks.
    token_text: object = field(default=None, repr=False)
    # Memory of a model that is not a torch module (CTranslate2, ONNX): the runtime says what it holds.
    size_bytes: int | None = None
    # A vision model's processor (images to pixel values and image tokens: workers/vision.py); None otherwise.
    processor: object = field(default=None, repr=False)


def attach_adapter(loaded: LoadedModel, name: str, path: str) -> None:
    """Put a LoRA adapter on the loaded base; several adapters share one base in memory and one batch."""
    with loaded.lock:
        if name in loaded.adapters:
            return
        from peft import PeftModel

        if not loaded.adapters:
            loaded.model = PeftModel.from_pretrained(loaded.model, path, adapter_name=name).eval()
        else:
            loaded.model.load_adapter(path, adapter_name=name)
        loaded.adapters.add(name)
    logger.info("attached adapter %s to %s", name, loaded.model_id)


def detach_adapter(loaded: LoadedModel, name: str) -> bool:
    """Take a LoRA adapter off the loaded base (its model was deleted); False if it was not attached."""
    with loaded.lock:
        if name not in loaded.adapters:
            return False
        loaded.adapters.discard(name)
        loaded.prefixes.pop(name, None)  # its keys and values were computed through it
        if loaded.adapters:
            loaded.model.delete_adapter(name)
        else:
            # The last one: the plain base again, without LoRA layers (a batch passes adapter names only to peft).
            loaded.model = loaded.model.unload()
    logger.info("detached adapter %s from %s", name, loaded.model_id)
    return True


def load_model(*, model_id: str, path: str, context_length: int, device: torch.device, dtype: str = "auto",
               quantization: str = "none", kind: str = "chat", parameter_count: int = 0) -> LoadedModel:
    """A chat model as a causal LM; an embedding model as its bare encoder (workers/embeddings.py pools it);
    a vision model as an image-text-to-text model with its processor; an audio or speech model in its own
    runtime (workers/audio_runtime.py)."""
    if kind in ("audio", "speech"):
        from .audio_runtime import load_audio_model

        return load_audio_model(model_id=model_id, path=path, kind=kind, device=device,
                                parameter_count=parameter_count)
    started = time.perf_counter()
    if dtype == "auto":
        # Half precision on a GPU halves memory; the CPU computes float32 fastest.
        torch_dtype = torch.float16 if device.type == "cuda" else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    processor = None
    if kind == "vision":
        processor = load_processor(path)  # without torchvision where the model's processor asks for it
        tokenizer = processor.tokenizer
        # The processor holds the template that renders image parts; the tokenizer's own may be missing.
        tokenizer.chat_template = processor.chat_template or tokenizer.chat_template
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
    model_class = {"embedding": AutoModel, "vision": AutoModelForImageTextToText}.get(kind, AutoModelForCausalLM)
    if quantization in ("bnb-4bit", "bnb-8bit"):
        from transformers import BitsAndBytesConfig

        quantization_config = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype)
            if quantization == "bnb-4bit" else BitsAndBytesConfig(load_in_8bit=True))
        model = model_class.from_pretrained(path, dtype=torch_dtype, quantization_config=quantization_config,
                                            device_map={"": device}).eval()
    else:
        model = model_class.from_pretrained(path, dtype=torch_dtype).to(device).eval()
    if device.type == "cpu" and quantization == "none":
        from django.conf import settings

        use_packed_linear(model, mode=settings.AIHUB_CPU_PACKED_LINEAR)
    seconds = time.perf_counter() - started
    logger.info("loaded %s on %s in %.2fs", model_id, device, seconds)
    return LoadedModel(model_id, model, tokenizer, device, context_length, seconds, processor=processor)
