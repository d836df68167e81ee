"""The response cache for deterministic requests (temperature 0, or a seed), scoped per user.

A hit is answered by the web process without a GPU: it writes the cached
answer into the request's event log, so SSE, websocket and plain responses
work unchanged, and the request row records `cache_hit` for analytics.
"""
from __future__ import annotations

import hashlib
import json

from django.conf import settings

from apps.core.redis import sync_client

# Everything that changes the answer: the fingerprint (an answer cached from an earlier build of the model is
# not this build's answer) and "constraint", the grammar of response_format (or a forced tool call).
CACHED_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "seed", "ignore_eos", "system_fingerprint",
                 "constraint")


def is_deterministic(params: dict) -> bool:
    return params.get("temperature") == 0 or params.get("seed") is not None


def reproducible_from_text(params: dict) -> bool:
    """The cache stores one answer's text: a request wanting more (choices, logprobs) or sampling under
    penalties or a bias is never answered from it."""
    return ((params.get("n") or 1) == 1 and not params.get("logprobs") and not params.get("logit_bias")
            and not params.get("presence_penalty") and not params.get("frequency_penalty"))


def cache_wanted(requested: bool | None, params: dict) -> bool:
    """Requests with tools are never cached: a stored entry holds text, not the calls (and their ids) of an answer."""
    wanted = settings.AIHUB_RESPONSE_CACHE_DEFAULT if requested is None else requested
    return bool(wanted) and is_deterministic(params) and reproducible_from_text(params) and not params.get("tools")


def cache_key(*, user_id: int, model: str, messages: list[dict], params: dict) -> str:
    material = json.dumps({"user": user_id, "model": model, "messages": messages,
                           "params": {name: params.get(name) for name in CACHED_PARAMS}}, sort_keys=True)
    return "aihub:cache:" + hashlib.sha256(material.encode()).hexdigest()


def cache_get(key: str) -> dict | None:
    value = sync_client().get(key)
    return json.loads(value) if value else None


def cache_put(key: str, *, completion: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> None:
    sync_client().set(key, json.dumps({"completion": completion, "finish_reason": finish_reason,
                                       "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}),
                      ex=settings.AIHUB_RESPONSE_CACHE_TTL_SECONDS)
