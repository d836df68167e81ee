"""POST /embeddings through the official SDK, against the real default embedding model (all-MiniLM-L6-v2)."""
from __future__ import annotations

import base64
import struct
import uuid

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import EMBEDDING_MODEL, make_account
from tests.support.busy import job_list_full_answers

GUITAR = "A man is playing a guitar."
PARAPHRASE = "Someone plays an instrument."
UNRELATED = "The stock market fell today."


@pytest.fixture(scope="module")
def reference():
    """all-MiniLM-L6-v2 computed in this process with transformers: mean pooling over the mask, then L2."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    from apps.catalog.builtin import BUILTIN_MODELS

    path = str(BUILTIN_MODELS[EMBEDDING_MODEL].locate())
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def embed(texts: list[str]) -> np.ndarray:
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()

    embed.tokenizer = tokenizer
    return embed


def _vectors(response) -> np.ndarray:
    return np.array([item.embedding for item in response.data], dtype=np.float32)


def _error(exc_info) -> dict:
    return exc_info.value.response.json()["error"]


def test_it_scores_a_paraphrase_closer_than_an_unrelated_sentence(openai_client, models):
    response = openai_client.embeddings.create(model=models["embedding"], input=[GUITAR, PARAPHRASE, UNRELATED])
    vectors = _vectors(response)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)  # normalised, as sentence-transformers
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert response.model == EMBEDDING_MODEL and response.object == "list"
    assert [item.index for item in response.data] == [0, 1, 2]


def test_the_catalog_describes_the_default_embedding_model(hub, alice, models):
    described = httpx.get(f"{hub.api_url}/models/{models['embedding']}", headers=alice.auth).json()
    assert (described["kind"], described["capabilities"], described["context_length"]) == ("embedding",
                                                                                          ["embedding"], 256)
    assert (described["embedding_dimensions"], described["pooling"], described["supports_dimensions"]) == (
        384, "mean", False)


def test_it_returns_what_the_model_computes_in_process(openai_client, models, reference):
    texts = [GUITAR, "Short.", "A much longer sentence about what embedding models do with the words they read."]
    response = openai_client.embeddings.create(model=models["embedding"], input=texts, encoding_format="float")
    assert np.abs(_vectors(response) - reference(texts)).max() < 1e-4


def test_float_and_base64_agree_and_base64_is_little_endian_float32(hub, alice, openai_client, models):
    as_floats = openai_client.embeddings.create(model=models["embedding"], input=GUITAR, encoding_format="float")
    # The SDK asks for base64 when no format is given, and decodes it.
    decoded = openai_client.embeddings.create(model=models["embedding"], input=GUITAR)
    assert np.abs(_vectors(as_floats) - _vectors(decoded)).max() < 1e-6
    raw = httpx.post(f"{hub.api_url}/embeddings", headers=alice.auth, timeout=120,
                     json={"input": GUITAR, "encoding_format": "base64"}).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert np.allclose(struct.unpack(f"<{len(packed) // 4}f", packed), as_floats.data[0].embedding, atol=1e-6)
    assert raw["model"] == EMBEDDING_MODEL  # the default embedding model when none is named


def test_a_list_of_40_inputs_returns_40_embeddings_in_order(openai_client, models, reference):
    texts = [f"Sentence number {i} is {'quite ' * (i % 7)}about topic {i % 5}." for i in range(40)]
    response = openai_client.embeddings.create(model=models["embedding"], input=texts)
    assert [item.index for item in response.data] == list(range(40))
    assert np.abs(_vectors(response) - reference(texts)).max() < 1e-4


def test_token_ids_embed_as_their_text_and_usage_counts_tokens(openai_client, models, reference):
    ids = reference.tokenizer(GUITAR, add_special_tokens=False)["input_ids"]
    by_text = openai_client.embeddings.create(model=models["embedding"], input=[GUITAR, UNRELATED])
    by_ids = openai_client.embeddings.create(model=models["embedding"], input=[ids])
    single = openai_client.embeddings.create(model=models["embedding"], input=ids)  # one input as a token list
    assert np.abs(_vectors(by_ids)[0] - _vectors(by_text)[0]).max() < 1e-5
    assert np.abs(_vectors(single)[0] - _vectors(by_text)[0]).max() < 1e-5
    unrelated = reference.tokenizer(UNRELATED, add_special_tokens=False)["input_ids"]
    assert by_text.usage.prompt_tokens == by_text.usage.total_tokens == len(ids) + len(unrelated)
    assert by_ids.usage.prompt_tokens == len(ids)


def test_it_refuses_bad_inputs_by_name(openai_client, models):
    create = openai_client.embeddings.create
    cases = [
        (dict(input="word " * 300), "input", "context_length_exceeded"),  # the model takes 254 tokens + 2
        (dict(input=[]), "input", "invalid_value"),
        (dict(input=[""]), "input", "invalid_value"),
        (dict(input=[GUITAR, [1, 2]]), "input", "invalid_value"),
        (dict(input=[[10**9]]), "input", "invalid_value"),  # beyond the vocabulary
        (dict(input=GUITAR, encoding_format="int8"), "encoding_format", "invalid_value"),
        (dict(input=GUITAR, dimensions=128), "dimensions", "unsupported_parameter"),
    ]
    for kwargs, param, code in cases:
        with pytest.raises(openai.BadRequestError) as exc_info:
            create(model=models["embedding"], **kwargs)
        error = _error(exc_info)
        assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error"), kwargs
    # The model's own size is no truncation: accepted.
    assert len(create(model=models["embedding"], input=GUITAR, dimensions=384).data[0].embedding) == 384


def test_chat_and_embedding_models_are_not_interchangeable(openai_client, models):
    with pytest.raises(openai.BadRequestError) as exc_info:
        openai_client.embeddings.create(model=models["tiny"], input=GUITAR)
    assert (_error(exc_info)["param"], _error(exc_info)["code"]) == ("model", "model_not_supported")
    with pytest.raises(openai.BadRequestError) as exc_info:
        openai_client.chat.completions.create(model=models["embedding"], messages=[{"role": "user", "content": "hi"}])
    assert (_error(exc_info)["param"], _error(exc_info)["code"]) == ("model", "model_not_supported")


def test_another_users_private_embedding_model_does_not_exist_for_them(hub, openai_client, models):
    from apps.catalog.builtin import BUILTIN_MODELS
    from apps.catalog.services import model_register

    carol = make_account("carol")
    private = f"carols-embedder:{uuid.uuid4().hex[:6]}"
    model_register(model_id=private, path=BUILTIN_MODELS[EMBEDDING_MODEL].locate(), kind="embedding",
                   owner=carol.user)
    with pytest.raises(openai.NotFoundError) as exc_info:
        openai_client.embeddings.create(model=private, input=GUITAR)
    assert (_error(exc_info)["param"], _error(exc_info)["code"]) == ("model", "model_not_found")
    carols = openai.OpenAI(base_url=hub.api_url, api_key=carol.raw_key, max_retries=0, timeout=120)
    assert len(carols.embeddings.create(model=private, input=GUITAR).data) == 1


def test_the_key_token_budget_counts_embedding_tokens(hub, models):
    from apps.accounts.models import ApiKey

    account = make_account("budget")
    ApiKey.objects.filter(id=account.key.id).update(token_budget=20)
    client = openai.OpenAI(base_url=hub.api_url, api_key=account.raw_key, max_retries=0, timeout=120)
    used = client.embeddings.create(model=models["embedding"], input=[GUITAR, PARAPHRASE]).usage.prompt_tokens
    assert used == 12
    with pytest.raises(openai.RateLimitError) as exc_info:  # 12 spent: 40 more characters would pass 20
        client.embeddings.create(model=models["embedding"], input="a long enough sentence to pass the budget")
    assert _error(exc_info)["code"] == "insufficient_quota"


def test_an_unknown_parameter_is_refused_by_name(hub, alice):
    response = httpx.post(f"{hub.api_url}/embeddings", headers=alice.auth, timeout=120,
                          json={"input": GUITAR, "truncate": "end"})
    assert response.status_code == 400
    assert (response.json()["error"]["param"], response.json()["error"]["code"]) == ("truncate",
                                                                                     "unsupported_parameter")


def test_a_model_trained_for_truncation_answers_fewer_dimensions(openai_client, models):
    from apps.catalog.builtin import BUILTIN_MODELS
    from apps.catalog.services import model_register

    truncatable = f"matryoshka:{uuid.uuid4().hex[:6]}"  # the same weights, registered as truncatable
    model_register(model_id=truncatable, path=BUILTIN_MODELS[EMBEDDING_MODEL].locate(), kind="embedding",
                   supports_dimensions=True)
    full = _vectors(openai_client.embeddings.create(model=truncatable, input=[GUITAR, UNRELATED]))
    short = _vectors(openai_client.embeddings.create(model=truncatable, input=[GUITAR, UNRELATED], dimensions=64))
    assert short.shape == (2, 64)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    assert np.abs(short - expected).max() < 1e-5
    with pytest.raises(openai.BadRequestError) as exc_info:
        openai_client.embeddings.create(model=truncatable, input=GUITAR, dimensions=385)
    assert (_error(exc_info)["param"], _error(exc_info)["code"]) == ("dimensions", "invalid_value")


def test_embeddings_are_answered_while_chat_holds_every_worker_thread(hub, openai_client, models):
    import time

    from tests.support.busy import inference_worker_full

    openai_client.embeddings.create(model=models["embedding"], input=GUITAR)  # loaded before the clock starts
    with inference_worker_full(hub, models["tiny"]):
        started = time.monotonic()
        response = openai_client.embeddings.create(model=models["embedding"], input=[GUITAR, PARAPHRASE])
        assert len(response.data) == 2 and time.monotonic() - started < 20


def test_a_full_embedding_list_answers_503_queue_full_and_gives_the_key_its_slot_back(hub, models):
    """Past AIHUB_EMBEDDING_MAX_QUEUE waiting jobs (here 0), a 503 with Retry-After; the key's one concurrency slot
    is given back each time, so the second try is refused by the list again, not by the key."""
    for response in job_list_full_answers("/embeddings", {"model": models["embedding"], "input": GUITAR},
                                          redis_db=9, AIHUB_EMBEDDING_MAX_QUEUE="0"):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "queue_full" and response.headers["retry-after"] == "5"


def test_the_api_documentation_describes_the_endpoint_with_every_accepted_field(hub):
    from apps.embeddings.serializers import EmbeddingRequestSerializer

    schema = httpx.get(f"{hub.base_url}/api/schema?format=json", timeout=60).json()
    body = schema["paths"]["/api/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    request = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert set(request["properties"]) == set(EmbeddingRequestSerializer().fields)
