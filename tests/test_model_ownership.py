"""Fine-tuned models are owned: private by default, shared or public by their owner, removed with their job."""
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from websockets.sync.client import connect

from apps.catalog.models import ModelEntry
from apps.chat.models import GenerationRequest
from tests.conftest import make_account
from tests.support.busy import inference_worker_full
from tests.support.fine_tuning import QUESTION, fine_tune, wait_for


def _chat(hub, account, model, **extra):
    return httpx.post(f"{hub.api_url}/chat/completions", headers=account.auth, timeout=120,
                      json={"model": model, "messages": QUESTION, "max_tokens": 2, "temperature": 0, **extra})


def _model_ids(hub, account) -> set[str]:
    response = httpx.get(f"{hub.api_url}/models", headers=account.auth)
    assert response.status_code == 200, response.text
    return {m["id"] for m in response.json()["data"]}


def _model(hub, account, model_id):
    return httpx.get(f"{hub.api_url}/models/{model_id}", headers=account.auth)


def _patch(hub, account, model_id, body):
    return httpx.patch(f"{hub.api_url}/models/{model_id}", headers=account.auth, json=body)


def _delete(hub, account, model_id):
    return httpx.delete(f"{hub.api_url}/models/{model_id}", headers=account.auth, timeout=30)


def _not_found(response, model_id):
    assert response.status_code == 404, response.text
    assert response.json() == {"error": {"message": f"The model '{model_id}' does not exist.",
                                         "type": "invalid_request_error", "param": "model",
                                         "code": "model_not_found"}}


def _ws_events(ws, request_id, *, until=("done", "error")):
    events = []
    while not events or events[-1]["type"] not in until:
        event = json.loads(ws.recv(timeout=60))
        if event.get("request_id") == request_id:
            events.append(event)
    return events


def test_another_users_private_fine_tune_does_not_exist_for_them(hub, alice, bob):
    model = fine_tune(hub, alice, suffix="mine")["fine_tuned_model"]
    own = _model(hub, alice, model).json()
    assert own["owned_by"] == alice.user.username and own["visibility"] == "private" and own["shared_with"] == []
    assert model in _model_ids(hub, alice) and _chat(hub, alice, model).status_code == 200

    assert model not in _model_ids(hub, bob)
    # Exactly the answer for a model that does not exist, on every path that takes a model id.
    _not_found(_model(hub, bob, model), model)
    _not_found(_chat(hub, bob, model), model)
    _not_found(_chat(hub, bob, model, stream=True), model)
    _not_found(httpx.patch(f"{hub.api_url}/me", headers=bob.auth, json={"preferred_model": model}), model)
    _not_found(_patch(hub, bob, model, {"visibility": "public"}), model)
    _not_found(_delete(hub, bob, model), model)
    base_check = httpx.post(f"{hub.api_url}/training/jobs", headers=bob.auth, json={
        "base_model": model, "dataset_path": "secret.jsonl"})
    assert base_check.status_code == 404 and base_check.json()["error"]["code"] == "model_not_found"
    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=bob.auth) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "authenticated"
        ws.send(json.dumps({"type": "chat.completion", "request": {"model": model, "messages": QUESTION}}))
        refused = json.loads(ws.recv(timeout=30))
    assert refused["type"] == "error" and refused["error"]["code"] == "model_not_found"
    assert httpx.get(f"{hub.api_url}/me", headers=bob.auth).json()["preferred_model"] is None
    # Untouched by bob's attempts.
    assert _model(hub, alice, model).json()["visibility"] == "private" and model in _model_ids(hub, alice)

    operator = make_account("operator", staff=True, scopes=["inference", "admin"])
    seen_by_staff = _model(hub, operator, model).json()
    assert seen_by_staff["owned_by"] == alice.user.username and model in _model_ids(hub, operator)
    assert _chat(hub, operator, model).status_code == 200
    staff_without_admin_key = make_account("staff", staff=True)
    _not_found(_model(hub, staff_without_admin_key, model), model)


def test_the_owner_shares_with_named_users_then_with_everyone_and_auto_follows(hub, alice, bob):
    model = fine_tune(hub, alice, suffix="shared")["fine_tuned_model"]
    carol = make_account("carol")
    unknown = _patch(hub, alice, model, {"visibility": "shared", "shared_with": [bob.user.username, "nobody-x"]})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "shared_with"
    assert "nobody-x" in unknown.json()["error"]["message"]
    assert _model(hub, alice, model).json()["visibility"] == "private"  # nothing of the refused change stayed

    shared = _patch(hub, alice, model, {"visibility": "shared", "shared_with": [bob.user.username]})
    assert shared.status_code == 200, shared.text
    assert shared.json()["visibility"] == "shared" and shared.json()["shared_with"] == [bob.user.username]
    seen_by_bob = _model(hub, bob, model).json()
    # Bob may use it but learns neither whose it is nor whom else it is shared with.
    assert seen_by_bob["owned_by"] == "user" and seen_by_bob["shared_with"] is None
    assert model in _model_ids(hub, bob) and model not in _model_ids(hub, carol)
    assert _chat(hub, bob, model).status_code == 200
    _not_found(_chat(hub, carol, model), model)
    # Shared with bob is not bob's: he may use it, not change or delete it.
    for response in (_patch(hub, bob, model, {"visibility": "public"}), _delete(hub, bob, model)):
        assert response.status_code == 403 and response.json()["error"]["code"] == "not_model_owner"

    assert httpx.patch(f"{hub.api_url}/me", headers=bob.auth, json={"preferred_model": model}).status_code == 200
    assert _chat(hub, bob, "auto").json()["model"] == model  # his preference, while he may use it
    assert _patch(hub, alice, model, {"visibility": "private"}).status_code == 200
    assert model not in _model_ids(hub, bob)
    _not_found(_chat(hub, bob, model), model)
    rerouted = _chat(hub, bob, "auto")
    assert rerouted.status_code == 200 and rerouted.json()["model"] != model  # the stale preference is ignored

    public = _patch(hub, alice, model, {"visibility": "public"})
    assert public.status_code == 200 and public.json()["visibility"] == "public"
    assert model in _model_ids(hub, carol) and _model(hub, carol, model).json()["owned_by"] == "user"
    assert _chat(hub, carol, model).status_code == 200


def test_operator_models_cannot_be_changed_or_deleted_through_the_api(hub, alice, models):
    operator = make_account("operator", staff=True, scopes=["inference", "admin"])
    for account in (alice, operator):
        for response in (_patch(hub, account, models["tiny"], {"visibility": "private"}),
                         _delete(hub, account, models["tiny"])):
            assert response.status_code == 403 and response.json()["error"]["code"] == "operator_model"
    listed = {m["id"]: m for m in httpx.get(f"{hub.api_url}/models", headers=alice.auth).json()["data"]}
    assert listed[models["tiny"]]["visibility"] == "public" and listed[models["tiny"]]["owned_by"] == "aihub"
    assert ModelEntry.objects.filter(id=models["tiny"], enabled=True).exists()


def test_deleting_a_fine_tuned_model_takes_it_off_the_workers_and_the_disk(hub, alice, models):
    model = fine_tune(hub, alice, suffix="gone")["fine_tuned_model"]
    adapter = Path(ModelEntry.objects.get(id=model).adapter_path)
    assert adapter.is_dir()
    assert _chat(hub, alice, model).status_code == 200  # the inference worker now has the adapter attached
    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=alice.auth) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "authenticated"
        # Long generations fill the worker, so the next request waits in the queue while its model goes.
        with inference_worker_full(hub, models["tiny"]):
            ws.send(json.dumps({"type": "chat.completion", "request": {"model": model, "messages": QUESTION}}))
            accepted = json.loads(ws.recv(timeout=30))
            assert accepted["type"] == "accepted", accepted
            deleted = _delete(hub, alice, model)
            assert deleted.status_code == 200 and deleted.json() == {"id": model, "object": "model", "deleted": True}
        queued = _ws_events(ws, accepted["request_id"])
    assert queued[-1]["type"] == "error" and queued[-1]["error"]["code"] == "model_not_found"
    assert "token" not in {e["type"] for e in queued}
    assert model not in _model_ids(hub, alice)
    _not_found(_model(hub, alice, model), model)
    _not_found(_chat(hub, alice, model), model)
    assert not adapter.exists()
    wait_for(lambda: hub.processes.log("inference"), lambda log: f"detached adapter {model}" in log, timeout=30)
    assert _chat(hub, alice, models["tiny"]).status_code == 200  # the base serves on without it
    _not_found(_delete(hub, alice, model), model)


def test_a_request_queued_for_a_model_that_then_goes_private_is_refused_by_the_worker(hub, alice, bob, models):
    model = fine_tune(hub, alice, suffix="closing")["fine_tuned_model"]
    assert _patch(hub, alice, model, {"visibility": "public"}).status_code == 200
    with ThreadPoolExecutor(1) as pool:
        with inference_worker_full(hub, models["tiny"]):
            answer = pool.submit(_chat, hub, bob, model)  # waits in the queue while the worker is full
            wait_for(lambda: GenerationRequest.objects.filter(user=bob.user, model=model).values_list(
                "state", flat=True).first(), lambda state: state == GenerationRequest.State.QUEUED, timeout=30)
            assert _patch(hub, alice, model, {"visibility": "private"}).status_code == 200
        response = answer.result(timeout=60)
    _not_found(response, model)


def test_deleting_a_finished_job_deletes_its_model(hub, alice):
    job = fine_tune(hub, alice, suffix="withjob")
    model = job["fine_tuned_model"]
    adapter = Path(ModelEntry.objects.get(id=model).adapter_path)
    assert _chat(hub, alice, model).status_code == 200
    assert httpx.delete(f"{hub.api_url}/training/jobs/{job['id']}", headers=alice.auth).status_code == 204
    assert model not in _model_ids(hub, alice)
    _not_found(_chat(hub, alice, model), model)
    assert not adapter.exists() and not ModelEntry.objects.filter(id=model).exists()
