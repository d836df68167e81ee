"""Writes of the legacy /completions: one generation request per prompt, on chat's queue, limits and worker.

A raw-prompt request is a GenerationRequest like a chat one, without a
conversation: `params["prompt"]` holds the text (or token ids) the engine
continues as it is, without the chat template (workers/batching.py), and
`prompt_messages` is empty. Everything else (routing, limits, queue bound,
claim, events, cancel, reader lease, settling) is chat's, unchanged.
"""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import transaction

import celeryconfig
from apps.accounts.limits import effective_limits, estimate_prompt_tokens, limits_admit, limits_settle
from apps.catalog.worker_registry import live_workers
from apps.core.errors import AppError
from apps.core.publishing import enqueue_on_commit

from .models import GenerationRequest
from .services import AUTO, _params, chat_route, max_tokens_for, queue_check
from .text_serializers import LEGACY_DEFAULT_MAX_TOKENS


def _prompt_cost(prompt: str | list[int]) -> int:
    """Tokens a prompt is expected to take, reserved against the limits (settled against the real count)."""
    return estimate_prompt_tokens([{"content": prompt}]) if isinstance(prompt, str) else len(prompt)


@transaction.atomic
def text_completion_create(*, user, api_key, data: dict) -> list[GenerationRequest]:
    """Store and enqueue one request per prompt (`data` is validated TextCompletionRequestSerializer output).

    Each prompt is its own request against the key's limits (requests, tokens,
    concurrency), so a list of prompts costs what as many single requests cost;
    if any is refused, none is stored and the tokens and concurrency already taken are given back (the
    requests-per-minute count of the prompts before it stays spent, as for any admitted request; a list longer
    than the key's per-minute allowance is refused before anything is taken).
    The response cache is not used: its entries are keyed on chat messages.
    """
    prompts = data["prompt"]
    requested = data.get("model")
    if requested is None and settings.AIHUB_DEFAULT_MODEL == AUTO:
        requested = AUTO
    # Routing (`auto`) classifies text, as for a chat request with the prompts as its message.
    text = " ".join(p for p in prompts if isinstance(p, str))
    model, route = chat_route(user=user, requested=requested, messages=[{"role": "user", "content": text}],
                              workers=live_workers(), api_key=api_key)
    max_tokens = max_tokens_for(model, requested=data.get("max_tokens"), default=LEGACY_DEFAULT_MAX_TOKENS)
    base_params = _params(data, model=model, max_tokens=max_tokens, api_key=api_key)
    if data.get("logprobs") is not None:  # legacy: an int, the alternatives wanted (0: the chosen token's only)
        base_params.update(logprobs=True, top_logprobs=data["logprobs"])
    per_minute = effective_limits(api_key).requests_per_minute
    if per_minute and len(prompts) > per_minute:
        raise AppError(f"{len(prompts)} prompts are {len(prompts)} requests; this API key allows {per_minute} "
                       "per minute.", status=429, type="rate_limit_error", param="prompt",
                       code="rate_limit_exceeded", retry_after=60)
    queue_check()
    generations, reservations = [], []
    try:
        for prompt in prompts:
            generation_id = uuid.uuid4()
            reservation = limits_admit(key=api_key, request_id=str(generation_id),
                                       cost=_prompt_cost(prompt) + max_tokens)
            reservations.append(reservation)
            generations.append(GenerationRequest.objects.create(
                id=generation_id, user=user, api_key=api_key, conversation=None, model=model.id,
                route=route.reason, prompt_messages=[],
                params={**base_params, "prompt": prompt, "limits": reservation}))
    except BaseException:
        for reservation in reservations:  # the transaction rolls back: give every share back
            limits_settle(reservation, used_tokens=0)
        raise
    for generation in generations:
        enqueue_on_commit(celeryconfig.GENERATE_TASK, args=[str(generation.id)], queue=route.queue)
    return generations
