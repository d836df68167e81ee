"""The automatic-choice rules, one by one (apps/catalog/placement.py)."""
import time

import pytest

from apps.catalog.placement import Candidate, Performance, choose_model, choose_worker, task_type
from apps.catalog.worker_registry import WorkerState
from apps.core.errors import AppError

MB = 2**20


def worker(name, *, budget=100 * MB, models_bytes=0, loaded=(), total=1000 * MB, used=0):
    return WorkerState(hostname=name, control_queue=f"worker.{name}", device="cpu", budget_bytes=budget,
                       models_bytes=models_bytes, memory_total_bytes=total, memory_used_bytes=used,
                       loaded={m: {"id": m} for m in loaded}, raw={})


def model(name, *caps, size=10 * MB):
    return Candidate(name, caps or ("chat",), {"cpu": size, "cuda": size // 2})


def user_says(text):
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("text, task", [
    ("What is the capital of France?", "chat"),
    ("Fix this:\n```python\nprint('x')\n```", "code"),
    ("def add(a, b):\n    return a + b", "code"),
    ("SELECT name FROM users WHERE id = 1", "code"),
    ("Write a python function that parses a regex", "code"),
    ("Tell me about a function at the town hall", "chat"),
])
def test_it_tells_the_task_from_the_messages(text, task):
    assert task_type(user_says(text)) == task


@pytest.mark.parametrize("text", ["\n" * 1_000_000, " \n" * 500_000, "x\n" * 500_000, "select " * 200_000,
                                  "from " * 200_000 + "import"])
def test_telling_the_task_takes_linear_bounded_time_on_hostile_text(text):
    started = time.perf_counter()
    assert task_type(user_says(text)) in ("chat", "code")
    assert time.perf_counter() - started < 0.5


def test_only_the_start_of_the_user_text_is_classified(monkeypatch):
    from django.conf import settings

    assert task_type(user_says("hello\n" * 100 + "def add(a, b):")) == "code"
    monkeypatch.setattr(settings, "AIHUB_ROUTING_SAMPLE_CHARS", 100)
    assert task_type(user_says("hello\n" * 100 + "def add(a, b):")) == "chat"


def test_images_make_it_a_vision_task():
    assert task_type(user_says("what is this?"), has_images=True) == "vision"


def test_a_code_task_prefers_a_code_model():
    chosen, reason = choose_model(task="code", candidates=[model("chat:1"), model("coder:1", "chat", "code")],
                                  workers=[worker("w")], performance={}, preferred=None)
    assert chosen == "coder:1" and "task=code" in reason


def test_a_code_task_falls_back_to_chat_models():
    chosen, reason = choose_model(task="code", candidates=[model("chat:1")], workers=[], performance={},
                                  preferred=None)
    assert chosen == "chat:1" and "no code model" in reason


def test_a_vision_task_without_a_vision_model_is_refused():
    with pytest.raises(AppError) as refused:
        choose_model(task="vision", candidates=[model("chat:1")], workers=[], performance={}, preferred=None)
    assert refused.value.status == 404


def test_a_loaded_model_is_preferred_to_avoid_a_swap():
    chosen, reason = choose_model(task="chat", candidates=[model("a:1"), model("b:1")],
                                  workers=[worker("w", loaded=["b:1"], models_bytes=10 * MB)],
                                  performance={}, preferred=None)
    assert chosen == "b:1" and "already loaded" in reason


def test_models_that_fit_no_worker_are_skipped():
    chosen, _ = choose_model(task="chat", candidates=[model("a:big", size=500 * MB), model("b:small", size=5 * MB)],
                             workers=[worker("w", budget=100 * MB)], performance={}, preferred=None)
    assert chosen == "b:small"


def test_nothing_fitting_is_an_insufficient_memory_error():
    with pytest.raises(AppError) as refused:
        choose_model(task="chat", candidates=[model("a:big", size=500 * MB)], workers=[worker("w")],
                     performance={}, preferred=None)
    assert refused.value.status == 507 and refused.value.code == "insufficient_memory"


def test_fewer_errors_then_faster_wins_among_cold_models():
    performance = {"a:1": Performance(0.5, 10.0), "b:1": Performance(0.0, 50.0), "c:1": Performance(0.0, 20.0)}
    chosen, reason = choose_model(task="chat", candidates=[model("a:1"), model("b:1"), model("c:1")],
                                  workers=[worker("w")], performance=performance, preferred=None)
    assert chosen == "c:1" and "20 ms/token" in reason


def test_the_users_preferred_model_wins_when_it_suits_and_fits():
    candidates = [model("a:1"), model("b:1"), model("big:1", size=500 * MB)]
    workers = [worker("w", loaded=["a:1"], models_bytes=10 * MB)]
    assert choose_model(task="chat", candidates=candidates, workers=workers, performance={},
                        preferred="b:1") == ("b:1", "task=chat; user preference")
    chosen, _ = choose_model(task="chat", candidates=candidates, workers=workers, performance={},
                             preferred="big:1")
    assert chosen == "a:1"  # the preference does not fit: ignored


def test_a_request_goes_to_the_worker_that_holds_its_model():
    workers = [worker("a", budget=500 * MB), worker("b", loaded=["m:1"], models_bytes=10 * MB)]
    assert choose_worker(model_id="m:1", bytes_by_device={"cpu": MB, "cuda": MB}, workers=workers)[:2] == \
        ("worker.b", "b")


def test_a_cold_model_goes_to_the_worker_with_the_most_free_memory():
    workers = [worker("a", budget=50 * MB), worker("b", budget=300 * MB, models_bytes=100 * MB)]
    queue, name, reason = choose_worker(model_id="m:1", bytes_by_device={"cpu": MB, "cuda": MB}, workers=workers)
    assert (queue, name) == ("worker.b", "b") and "most free memory" in reason


def test_without_heartbeats_requests_use_the_shared_queue():
    assert choose_worker(model_id="m:1", bytes_by_device={"cpu": MB, "cuda": MB}, workers=[])[:2] == \
        ("gpu.inference", None)
