"""The model runtime: load a catalog entry and generate from chat messages (torch lives here)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

from .text_stream import TextStream

logger = logging.getLogger(__name__)


class GenerationError(Exception):
    def __init__(self, message: str, *, code: str, type: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.error = {"message": message, "type": type, "param": param, "code": code}


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


def attach_adapter(loaded: LoadedModel, name: str, path: str) -> None:
    """Put a LoRA adapter on the loaded base; several adapters share one base in memory."""
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
    if name not in loaded.adapters:
        return False
    loaded.adapters.discard(name)
    if loaded.adapters:
        loaded.model.delete_adapter(name)
    else:
        # The last one: the plain base again, without LoRA layers (active_adapter expects that when none).
        loaded.model = loaded.model.unload()
    logger.info("detached adapter %s from %s", name, loaded.model_id)
    return True


@contextmanager
def active_adapter(loaded: LoadedModel, name: str | None):
    """Generate with adapter `name`, or with the plain base when None."""
    if not loaded.adapters:
        yield
    elif name is None:
        with loaded.model.disable_adapter():
            yield
    else:
        loaded.model.set_adapter(name)
        yield


def load_model(*, model_id: str, path: str, context_length: int, device: torch.device, dtype: str = "auto",
               quantization: str = "none") -> LoadedModel:
    started = time.perf_counter()
    if dtype == "auto":
        # Half precision on a GPU halves memory; the CPU computes float32 fastest.
        torch_dtype = torch.float16 if device.type == "cuda" else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if quantization in ("bnb-4bit", "bnb-8bit"):
        from transformers import BitsAndBytesConfig

        quantization_config = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype)
            if quantization == "bnb-4bit" else BitsAndBytesConfig(load_in_8bit=True))
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, quantization_config=quantization_config,
                                                     device_map={"": device}).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()
    seconds = time.perf_counter() - started
    logger.info("loaded %s on %s in %.2fs", model_id, device, seconds)
    return LoadedModel(model_id, model, tokenizer, device, context_length, seconds)


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | cancelled


class _StopWhen(StoppingCriteria):
    def __init__(self, predicate: Callable[[], bool]):
        self.predicate = predicate

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.predicate(), dtype=torch.bool, device=input_ids.device)


class _Streamer:
    """transformers' streamer protocol feeding a TextStream (the first put is the prompt)."""

    def __init__(self, text_stream: TextStream):
        self.text_stream = text_stream
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.text_stream.add(value.reshape(-1).tolist())

    def end(self):
        pass


def prompt_ids(loaded: LoadedModel, messages: list[dict]) -> torch.Tensor:
    encoded = loaded.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return encoded["input_ids"]


def generate(loaded: LoadedModel, *, messages: list[dict], params: dict,
             on_text: Callable[[str], None], should_stop: Callable[[], bool]) -> GenerationResult:
    input_ids = prompt_ids(loaded, messages)
    prompt_tokens = input_ids.shape[1]
    max_new_tokens = params["max_tokens"]
    if prompt_tokens + max_new_tokens > loaded.context_length:
        raise GenerationError(
            f"This model's maximum context length is {loaded.context_length} tokens; the messages take "
            f"{prompt_tokens} and max_tokens asks for {max_new_tokens}. Shorten the messages or max_tokens.",
            code="context_length_exceeded", param="messages")

    tokenizer = loaded.tokenizer
    text_stream = TextStream(lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                             params.get("stop") or [], on_text)
    cancelled = False

    def stop_now() -> bool:
        nonlocal cancelled
        if should_stop():
            cancelled = True
        return cancelled or text_stream.stopped

    temperature = params.get("temperature", 1.0)
    sampling = temperature > 0
    if params.get("seed") is not None:
        torch.manual_seed(params["seed"])
    generate_kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": sampling,
        "streamer": _Streamer(text_stream),
        "stopping_criteria": StoppingCriteriaList([_StopWhen(stop_now)]),
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    if params.get("ignore_eos"):
        generate_kwargs["min_new_tokens"] = max_new_tokens
    if sampling:
        generate_kwargs.update(temperature=temperature, top_p=params.get("top_p", 1.0), top_k=0)
    else:
        # Greedy: clear sampling defaults a model's generation_config may carry.
        generate_kwargs.update(temperature=None, top_p=None, top_k=None)
    input_ids = input_ids.to(loaded.device)
    with torch.inference_mode():
        output = loaded.model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), **generate_kwargs)
    new_tokens = output[0, prompt_tokens:].tolist()
    text = text_stream.finish()
    if cancelled:
        finish_reason = "cancelled"
    elif text_stream.stopped or (new_tokens and new_tokens[-1] in _eos_ids(loaded)):
        finish_reason = "stop"
    else:
        finish_reason = "length"
    return GenerationResult(text, prompt_tokens, len(new_tokens), finish_reason)


def _eos_ids(loaded: LoadedModel) -> set[int]:
    eos = loaded.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(loaded.tokenizer.eos_token_id)
    return ids
