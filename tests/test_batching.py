"""Continuous batching: many requests at once in the inference worker's one batch, each with its own answer.

Greedy answers are compared with the same request served alone on the real default model, whose logits are
not near-ties as a random model's are. Requests "ran together" when each started before any of them finished.
"""
import json
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest
from django.test import override_settings
from django.utils import timezone
from websockets.sync.client import connect

from apps.catalog.models import ModelEntry
from apps.catalog.services import model_register
from apps.chat.models import GenerationRequest
from tests.conftest import RUN_DIR, make_account
from tests.support.busy import INFERENCE_THREADS
from tests.support.fine_tuning import QUESTION, SECRET, job_create, job_finished, jsonl, upload, wait_for
from tests.support.processes import MODEL_CACHE, ProcessGroup, wait_until_healthy
from tests.support.tiny_models import build_tiny_chat_model

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "List three facts about the ocean.",
    "Describe your favourite city and why.",
    "What is the capital of France? Answer in one sentence, then tell me about its history, its food, "
    "its museums and the river that runs through it.",
]


def _chat(api_url, account, **body) -> dict:
    response = httpx.post(f"{api_url}/chat/completions", headers=account.auth, timeout=240,
                          json={"cache": False, **body})
    assert response.status_code == 200, response.text
    return response.json()


def _answer(reply: dict) -> tuple[str, str, int]:
    return (reply["choices"][0]["message"]["content"], reply["choices"][0]["finish_reason"],
            reply["usage"]["completion_tokens"])


def _all_at_once(api_url, account, bodies: list[dict]) -> list[dict]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: _chat(api_url, account, **body), bodies))


def _ran_together(account, since) -> None:
    rows = list(GenerationRequest.objects.filter(user=account.user, created_at__gte=since))
    assert rows and all(r.state == GenerationRequest.State.SUCCEEDED for r in rows)
    assert max(r.first_token_at for r in rows) < min(r.finished_at for r in rows), \
        "the requests did not run at the same time"


def _message(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def test_requests_of_different_lengths_settings_and_stops_in_one_batch_each_get_their_own_answer(hub, models):
    account = make_account("batch")
    model = models["default"]
    bodies = [
        {"messages": _message(PROMPTS[0]), "max_tokens": 10, "temperature": 0},
        {"messages": _message(PROMPTS[1]), "max_tokens": 40, "temperature": 0},
        {"messages": _message(PROMPTS[4]), "max_tokens": 24, "temperature": 0},
        {"messages": _message(PROMPTS[3]), "max_tokens": 30, "temperature": 0.9, "top_p": 0.9, "seed": 7},
        {"messages": _message(PROMPTS[3]), "max_tokens": 30, "temperature": 0.9, "top_p": 0.9, "seed": 8},
    ]
    bodies = [{"model": model, **body} for body in bodies]
    alone = [_answer(_chat(hub.api_url, account, **body)) for body in bodies]
    # A stop string from the middle of an answer: the batched request must end just before it.
    text = alone[1][0]
    stop = text.split()[5]
    bodies.append({**bodies[1], "stop": [stop]})
    alone.append((text[:text.index(stop)], "stop", None))

    since = timezone.now()
    together = [_answer(reply) for reply in _all_at_once(hub.api_url, account, bodies)]

    for (text, reason, tokens), (expected_text, expected_reason, expected_tokens) in zip(together, alone):
        assert text == expected_text and reason == expected_reason
        if expected_tokens is not None:
            assert tokens == expected_tokens
    assert together[3][0] != together[4][0]  # the two seeds drew differently, each as it would alone
    _ran_together(account, since)


def _ws_request(streams: ExitStack, hub, account, body) -> tuple:
    # Unbounded incoming queue: the test reads one socket while the others stream on.
    ws = streams.enter_context(connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=account.auth,
                                       max_queue=None))
    assert json.loads(ws.recv(timeout=10))["type"] == "authenticated"
    ws.send(json.dumps({"type": "chat.completion", "request": body}))
    accepted = json.loads(ws.recv(timeout=30))
    assert accepted["type"] == "accepted", accepted
    return ws, accepted["request_id"]


def _events(ws, until=("done", "error")) -> list[dict]:
    events = []
    while not events or events[-1]["type"] not in until:
        events.append(json.loads(ws.recv(timeout=120)))
    return events


def _engine_counters(api_url, operator) -> dict:
    """The inference workers' engine counters (steps, prefills, ...), summed, as their last heartbeat says."""
    workers = httpx.get(f"{api_url}/models/status", headers=operator.auth).json()["workers"]
    batches = [worker["batch"] for worker in workers if worker.get("batch")]
    return {name: sum(batch[name] for batch in batches)
            for name in ("running", "waiting", "steps", "tokens", "prefills", "prefill_tokens", "mixed_steps")}


def _settled_counters(api_url, operator) -> dict:
    """Counters once the batch is idle and they stay the same across more than two heartbeats (AIHUB_HEARTBEAT_
    SECONDS is 2 here): a heartbeat from before the last request ran would have been replaced by then."""
    deadline = time.monotonic() + 60
    last = _engine_counters(api_url, operator)
    while True:
        time.sleep(5)
        counters = _engine_counters(api_url, operator)
        if (counters == last and counters["running"] == counters["waiting"] == 0) or time.monotonic() > deadline:
            return counters
        last = counters


def test_prompts_of_very_different_lengths_joining_a_running_batch_ride_its_steps_and_get_their_own_answers(
        hub, models):
    """Prompts admitted while a request decodes are computed inside its decoding steps (one forward pass
    each step, no pass of their own), together when they arrive together, and each answer is still the one
    the request gets alone."""
    account = make_account("batch-join")
    operator = make_account("batch-join-operator", staff=True, scopes=["inference", "admin"])
    model = models["default"]
    long_prompt = "Here are my notes. " + " ".join(
        f"Note {i}: the {word} is on the shelf next to the {other}." for i, (word, other) in enumerate(
            zip(["book", "lamp", "cup", "plant", "clock", "radio"] * 8, ["door", "window", "bed", "desk"] * 12)))
    joining = [{"model": model, "messages": _message(prompt), "max_tokens": tokens, "temperature": 0}
               for prompt, tokens in (("Hi", 6), (long_prompt + " Which note mentions a radio?", 12),
                                      (PROMPTS[1], 9))]
    alone = [_answer(_chat(hub.api_url, account, **body)) for body in joining]
    running = {"model": model, "messages": _message(PROMPTS[0]), "max_tokens": 120, "temperature": 0,
               "ignore_eos": True}

    before = _settled_counters(hub.api_url, operator)
    since = timezone.now()
    with ExitStack() as opened:
        ws, _ = _ws_request(opened, hub, account, running)
        assert _events(ws, until=("token",))[-1]["type"] == "token"
        together = [_answer(reply) for reply in _all_at_once(hub.api_url, account, joining)]
        assert _events(ws)[-1]["usage"]["completion_tokens"] == 120
    assert together == alone
    rows = {row.params["max_tokens"]: row for row in GenerationRequest.objects.filter(user=account.user,
                                                                                     created_at__gte=since)}
    assert all(rows[120].first_token_at < row.first_token_at and row.finished_at < rows[120].finished_at
               for tokens, row in rows.items() if tokens != 120), "the prompts did not join the running request"

    after = _settled_counters(hub.api_url, operator)
    # 120 forward passes made the running request's 120 tokens; the three prompts and their answers were
    # computed inside them (the first pass, before them, was the running request's own prompt).
    assert after["steps"] - before["steps"] == 120
    assert after["prefills"] - before["prefills"] == 4
    assert after["mixed_steps"] - before["mixed_steps"] >= 1
    assert len(long_prompt) > 2000  # several hundred tokens beside a 1-token step and a few-token prompt


def _engine_answers(engine, loaded, requests: list[dict]) -> list[list[tuple]]:
    """Submit the requests (their choices: `n`) at once and wait: each one's (text, finish_reason, tokens)."""
    from workers.sequence import DONE, FAILED, Sequence

    submitted = []
    for number, params in enumerate(requests):
        outbox = queue.SimpleQueue()
        choices = [Sequence(request_id=str(number), messages=params["messages"], params=params, index=index,
                            outbox=outbox) for index in range(params.get("n", 1))]
        for sequence in choices:
            engine.submit(loaded, sequence)
        submitted.append((outbox, len(choices)))
    answers = []
    for outbox, count in submitted:
        results = [None] * count
        while None in results:
            kind, index, value = outbox.get(timeout=240)
            assert kind != FAILED, value
            if kind == DONE:
                results[index] = (value.text, value.finish_reason, value.completion_tokens)
        answers.append(results)
    return answers


def _idle_stats(engine) -> dict:
    """The engine's stats once its last step is counted (a request's answer comes out during that step)."""
    deadline = time.monotonic() + 30
    while (stats := engine.stats())["running"] or stats["waiting"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return stats


def test_a_prompt_longer_than_a_steps_allowance_is_computed_in_chunks_beside_the_running_rows(models):
    """With 16 prompt tokens a step, a 400-token prompt takes many steps; it and two others joining a running
    request get the answers they get alone, in no forward pass of their own (the engine in process, on the
    real default model)."""
    from workers.batching import BatchEngine
    from workers.engine import load_model, pick_device

    entry = ModelEntry.objects.get(id=models["default"])
    loaded = load_model(model_id=entry.id, path=entry.path, context_length=entry.context_length,
                        device=pick_device("cpu"))
    notes = " ".join(f"Note {i}: the key is in box {i * 7 % 13}." for i in range(40))
    joining = [
        {"messages": _message(notes + " Which box holds the key of note 3?"), "max_tokens": 8, "temperature": 0},
        {"messages": _message("Hi"), "max_tokens": 5, "temperature": 0},
        {"messages": _message(PROMPTS[2]), "max_tokens": 6, "temperature": 0.8, "seed": 3, "n": 2},
    ]
    running = {"messages": _message(PROMPTS[0]), "max_tokens": 80, "temperature": 0, "ignore_eos": True}
    whole = BatchEngine(max_batch_size=8, max_batch_tokens=2048, cache_budget=lambda: 2**30)
    # The first prompt a model sees is remembered as its reusable prefix: not the long one, which must be computed.
    _engine_answers(whole, loaded, [running])
    alone = [_engine_answers(whole, loaded, [request])[0] for request in joining]
    chunked = BatchEngine(max_batch_size=8, max_batch_tokens=16, cache_budget=lambda: 2**30)
    _engine_answers(chunked, loaded, [running])
    steps_alone = _idle_stats(chunked)["steps"]

    from workers.sequence import TEXT, Sequence

    outbox = queue.SimpleQueue()
    chunked.submit(loaded, Sequence(request_id="running", messages=running["messages"], params=running,
                                    outbox=outbox))
    assert outbox.get(timeout=240)[0] == TEXT  # its first token: it decodes now
    together = _engine_answers(chunked, loaded, joining)
    while outbox.get(timeout=240)[0] == TEXT:
        pass
    stats = _idle_stats(chunked)
    assert together == alone
    assert stats["steps"] - steps_alone == steps_alone, "the joining prompts took forward passes of their own"
    assert stats["mixed_steps"] >= 400 // 16
    assert len(loaded.tokenizer(notes)["input_ids"]) > 400


def test_packed_linear_layers_multiply_as_the_usual_ones_and_leave_every_answer_unchanged(models):
    """Linear layers on oneDNN-packed weights (workers/packed_linear.py) compute the same product: each layer's
    output equal to rounding for 1 to 200 rows, 16 greedy answers word for word with and without packing, and no
    more memory than the plain model beyond the packed copy of a weight tied to the embeddings."""
    import torch

    from workers.batching import BatchEngine
    from workers.engine import load_model, pick_device
    from workers.memory import module_bytes
    from workers.packed_linear import PackedLinear, use_packed_linear

    entry = ModelEntry.objects.get(id=models["default"])
    with override_settings(AIHUB_CPU_PACKED_LINEAR="off"):  # not as this machine's timing would decide
        loaded = {mode: load_model(model_id=entry.id, path=entry.path, context_length=entry.context_length,
                                   device=pick_device("cpu")) for mode in ("on", "off")}
    plain = [module for module in loaded["off"].model.modules() if type(module) is torch.nn.Linear]
    assert use_packed_linear(loaded["on"].model, mode="on")
    packed = [module for module in loaded["on"].model.modules() if isinstance(module, torch.nn.Linear)]
    assert packed and all(type(module) is PackedLinear for module in packed)
    assert not use_packed_linear(loaded["on"].model, mode="off")

    requests = [{"messages": _message(f"{PROMPTS[number % 4]} ({number})"), "max_tokens": 24, "temperature": 0}
                for number in range(16)]
    answers = {mode: _engine_answers(BatchEngine(max_batch_size=16, max_batch_tokens=2048, cache_budget=lambda: 2**30),
                                     each, requests) for mode, each in loaded.items()}
    assert answers["on"] == answers["off"]
    with torch.inference_mode():
        for layer, reference in zip(packed, plain):
            assert torch.equal(layer.weight, reference.weight)  # a packed weight still reads as the matrix
            for rows in (1, 2, 16, 200):
                x = torch.randn(rows, 1, layer.in_features)
                assert torch.allclose(layer(x), reference(x), atol=1e-4)
    # The packed copies replace the weights; the output layer's weight is the embeddings' too, so it stays.
    tied = loaded["on"].model.get_output_embeddings()
    assert tied.weight is loaded["on"].model.get_input_embeddings().weight
    assert module_bytes(loaded["on"].model) == module_bytes(loaded["off"].model) + tied.weight.numel() * 4


def test_a_cancel_mid_batch_ends_only_that_request(hub, models):
    account = make_account("batch-cancel")
    body = {"model": models["default"], "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    with ExitStack() as opened:
        streams = [_ws_request(opened, hub, account, {**body, "messages": _message(prompt)})
                   for prompt in PROMPTS[:3]]
        for ws, _ in streams:
            assert _events(ws, until=("token",))[-1]["type"] == "token"
        ws, cancelled_id = streams[1]
        cancelled_at = time.monotonic()
        ws.send(json.dumps({"type": "cancel", "request_id": cancelled_id}))
        ended = _events(ws)
        assert ended[-1]["type"] == "done" and ended[-1]["finish_reason"] == "cancelled", ended[-1]
        assert time.monotonic() - cancelled_at < 5
        others = [_events(ws)[-1] for ws, _ in (streams[0], streams[2])]
    assert [(e["type"], e["finish_reason"], e["usage"]["completion_tokens"]) for e in others] == [
        ("done", "length", 40)] * 2
    cancelled = GenerationRequest.objects.get(id=cancelled_id)
    assert cancelled.state == GenerationRequest.State.CANCELLED and cancelled.completion_tokens < 40


def test_a_worker_asks_valkey_whether_to_stop_once_per_interval_for_all_its_requests(hub, models):
    """A batch of requests costs the worker one stop check (a MGET of their cancel and lease keys) per 100 ms
    between them, not one each: its stop watcher reads every request's keys in one call."""
    from apps.core.events import STOP_POLL_SECONDS
    from apps.core.redis import sync_client

    def mget_calls() -> int:
        return sync_client().info("commandstats").get("cmdstat_mget", {}).get("calls", 0)

    account = make_account("batch-stop-watch")
    body = {"model": models["default"], "max_tokens": 120, "temperature": 0, "ignore_eos": True}
    with ExitStack() as opened:
        # As many as the worker has task threads, so all of them are in the batch at once.
        streams = [_ws_request(opened, hub, account, {**body, "messages": _message(f"{PROMPTS[i % 5]} ({i})")})
                   for i in range(INFERENCE_THREADS)]
        for ws, _ in streams:
            assert _events(ws, until=("token",))[-1]["type"] == "token"
        before, started = mget_calls(), time.monotonic()
        time.sleep(1.5)
        calls, window_end = mget_calls() - before, timezone.now()
        window = time.monotonic() - started
        finals = [_events(ws)[-1] for ws, _ in streams]
    assert [(e["type"], e["finish_reason"]) for e in finals] == [("done", "length")] * INFERENCE_THREADS
    rows = GenerationRequest.objects.filter(id__in=[request_id for _, request_id in streams])
    assert all(row.finished_at > window_end for row in rows), "a request ended inside the measured window"
    rounds = window / STOP_POLL_SECONDS
    # One per round (other processes' reads of worker states, and other workers' own watchers, add a few); asking
    # once per request, as each task thread did, is one per request per round: 6x.
    assert calls < INFERENCE_THREADS * rounds / 2, \
        f"{calls} MGETs in {window:.2f}s for {INFERENCE_THREADS} running requests"


def test_requests_for_an_adapter_and_for_its_base_run_together_with_the_right_outputs(hub, models):
    account = make_account("batch-adapter")
    data = upload(hub, account, jsonl(SECRET))
    created = job_create(hub, account, training_file=data["id"], suffix="batch", learning_rate=0.01, num_epochs=6,
                         batch_size=4, lora_r=16, lora_alpha=32, seed=1)
    assert created.status_code == 201, created.text
    job = job_finished(hub, account, created.json()["id"])
    assert job["status"] == "succeeded", job
    adapter, base = job["fine_tuned_model"], models["tiny"]
    # Long enough (the tiny model is fast) that the four overlap however their messages arrive.
    bodies = [{"model": name, "messages": messages, "max_tokens": 200, "ignore_eos": True, "temperature": 0}
              for name in (adapter, base) for messages in (QUESTION, _message("Hello there"))]
    alone = [_answer(_chat(hub.api_url, account, **body)) for body in bodies]
    assert alone[0][0].startswith("banana") and not alone[2][0].startswith("banana")

    since = timezone.now()
    together = [_answer(reply) for reply in _all_at_once(hub.api_url, account, bodies)]
    assert together == alone
    _ran_together(account, since)


MB = 2**20


@pytest.fixture(scope="module")
def small_cache(hub, models):
    """A hub whose worker's budget holds a small model and the cache of one long request, not of two.

    It shares the session's PostgreSQL but not its Redis, so the session hub's sweeper cannot see this hub's
    worker beat: it would take a request waiting here for memory (running, no token yet) for one whose worker
    died, and run it again on the session hub, whose events this hub's web never reads. One database with
    two Redis is not a deployment the hub supports; for this test the session hub's sweeper is paused.
    """
    import signal

    from apps.core.supervisor import signal_group

    sweeper = hub.processes.processes["default"]
    signal_group(sweeper, signal.SIGSTOP)
    try:
        yield from _small_cache_hub()
    finally:
        signal_group(sweeper, signal.SIGCONT)


def _small_cache_hub():
    from aihub_project.embedded import free_port
    from workers.engine import load_model, pick_device
    from workers.kv_cache import kv_bytes_per_token
    from workers.memory import module_bytes

    path = build_tiny_chat_model(MODEL_CACHE / "tiny-cache", hidden_size=128, layers=4, seed=5)
    model_register(model_id="tiny:cache", path=path)
    loaded = load_model(model_id="tiny:cache", path=str(path), context_length=4096, device=pick_device("cpu"))
    per_request = 620 * kv_bytes_per_token(loaded.model)  # a ~20-token prompt and 600 tokens
    budget = module_bytes(loaded.model) + int(per_request * 1.5)

    env = dict(os.environ)
    env["REDIS_URL"] = env["REDIS_URL"].rsplit("/", 1)[0] + "/4"
    env.update(AIHUB_HEARTBEAT_SECONDS="0.5", AIHUB_GPU_MEMORY_BUDGET=str(budget))
    log_dir = RUN_DIR / "logs" / "small-cache"
    log_dir.mkdir(parents=True, exist_ok=True)
    processes = ProcessGroup(env, log_dir)
    port = free_port()
    processes.start_web(port)
    processes.start_worker("inference", "gpu.inference", 4)
    processes.start_worker("training", "gpu.training")  # /health wants one on each GPU queue
    processes.start_worker("default", "default")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, processes)
        yield f"{base_url}/api/v1", "tiny:cache", per_request
    finally:
        processes.stop()


def test_a_request_whose_cache_does_not_fit_beside_the_running_batch_waits_instead_of_failing(small_cache):
    api_url, model, per_request_bytes = small_cache
    account = make_account("small-cache")
    operator = make_account("small-cache-operator", staff=True, scopes=["inference", "admin"])
    body = {"model": model, "messages": _message("Go on"), "max_tokens": 600, "ignore_eos": True}
    replies = _all_at_once(api_url, account, [body, body])
    assert [_answer(reply)[1:] for reply in replies] == [("length", 600)] * 2

    first, second = sorted(GenerationRequest.objects.filter(user=account.user), key=lambda r: r.first_token_at)
    # The second was held back until the first had (nearly) finished: not both in the cache at once.
    assert second.first_token_at >= first.first_token_at + 0.8 * (first.finished_at - first.first_token_at)
    # The worker's heartbeat carries the batch's figures: wait for one sent after both ended.
    workers = wait_for(lambda: httpx.get(f"{api_url}/models/status", headers=operator.auth).json()["workers"],
                       lambda workers: workers[0]["batch"]["running"] == workers[0]["batch"]["waiting"] == 0
                       and workers[0]["batch"]["waited_for_memory"] >= 1, timeout=30)
    batch = workers[0]["batch"]
    assert 0 < batch["cache_budget_bytes"] < 2 * per_request_bytes
    scraped = httpx.get(api_url.removesuffix("/api/v1") + "/metrics").text
    for series in ("aihub_worker_running_sequences", "aihub_worker_waiting_sequences", "aihub_worker_kv_cache_bytes",
                   "aihub_worker_kv_cache_budget_bytes"):
        assert f'{series}{{worker="{workers[0]["hostname"]}"}}' in scraped, series

    # A request whose cache could never fit is refused clearly, not queued forever.
    response = httpx.post(f"{api_url}/chat/completions", headers=account.auth, timeout=60,
                          json={**body, "max_tokens": 3000})
    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "insufficient_memory"
