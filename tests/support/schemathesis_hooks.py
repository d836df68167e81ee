"""Hooks for the schemathesis run of tests/test_openapi_conformance.py (loaded through SCHEMATHESIS_HOOKS).

Chat completions are fuzzed for real, but on the tiny model and with a few tokens, so that hundreds of
generated requests take seconds. Only values that were already valid are changed, so a case generated
to be invalid stays invalid.
"""
import schemathesis
from schemathesis.openapi.checks import EnsureResourceAvailability, RejectedPositiveData

TINY_MODEL = "tiny:chat"
MAX_TOKENS = 4


# The generating operations, and the fields that bound how many tokens they generate.
GENERATING = {"/api/v1/chat/completions": ("max_tokens", "max_completion_tokens"),
              "/api/v1/completions": ("max_tokens",), "/api/v1/responses": ("max_output_tokens",)}


# keep_alive -1 pins a model (the fuzz key is an admin's): a pinned model stays loaded for the rest of the
# session and would crowd out the models later tests need. The fuzz keeps models for a minute at most.
KEEPS_MODELS = {*GENERATING, "/api/v1/models/load"}


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if case.operation.path in KEEPS_MODELS and isinstance(body, dict) and body.get("keep_alive") == -1:
        body["keep_alive"] = 60
    if case.operation.path not in GENERATING or not isinstance(body, dict):
        return
    model = body.get("model")
    if "model" not in body or (isinstance(model, str) and 1 <= len(model) <= 200):
        body["model"] = TINY_MODEL
    for name in GENERATING[case.operation.path]:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
            body[name] = MAX_TOKENS


# Requests the schema cannot tell apart from good ones, refused with a 400 naming the parameter, because their
# validity depends on what the server holds or on another field (operation -> parameters). Only these are let
# through the positive_data_acceptance check; any other rejection of schema-valid data still fails the run.
STATEFUL_REJECTIONS = {
    "PATCH /api/v1/models/{model_id}": {"shared_with"},  # usernames that exist
    "POST /api/v1/training/jobs": {"training_file", "dataset_path", "base_model"},  # one of two; on this server
    "GET /api/v1/system/analytics": {"since", "until"},  # date-times at the edge of the representable range
    # image parts and no vision model here; a prompt or max_tokens beyond the model's context; max_tokens and
    # max_completion_tokens both given, with different values
    # top_logprobs without logprobs; a logit_bias key that is not a token id (OpenAPI 3.0 cannot say so)
    # metadata: a key's length (1 to 64) is in OpenAPI 3.0's blind spot too
    "POST /api/v1/chat/completions": {"messages", "max_tokens", "top_logprobs", "logit_bias", "metadata"},
    # a token id outside the vocabulary; echo with token ids; as chat
    "POST /api/v1/completions": {"prompt", "max_tokens", "echo", "logit_bias"},
    # as chat, for the mapped request; a previous response that is not yours or not complete
    "POST /api/v1/responses": {"input", "max_output_tokens", "previous_response_id", "tool_choice", "text", "tools",
                               "metadata"},
    "POST /api/v1/files": {"file"},  # an empty file: OpenAPI cannot bound a binary's size
    # dimensions only for models trained for truncation; an input longer than the model takes; a model of the
    # embedding kind
    "POST /api/v1/embeddings": {"dimensions", "input", "model"},
    "POST /api/v1/fine_tuning/jobs": {"training_file", "validation_file", "model"},  # on this server
    # semantic search for a user who turned conversation embeddings off (PATCH /me, which the fuzz also sends)
    "GET /api/v1/chat/conversations/search": {"mode"},
    # vector stores: a chunk size the store's model cannot take, or an overlap over half the size (another
    # field); an embedding model that is a chat model here; metadata and attribute keys' lengths (as chat);
    # file_ids or files (one of two); a compound filter's inner filters (the schema describes one level); a
    # file uploaded for fine-tuning, not as a document
    "POST /api/v1/vector_stores": {"chunking_strategy", "embedding_model", "metadata", "file_ids"},
    "POST /api/v1/vector_stores/{store_id}": {"metadata"},
    "POST /api/v1/vector_stores/{store_id}/files": {"chunking_strategy", "attributes", "file_id"},
    "POST /api/v1/vector_stores/{store_id}/files/{file_id}": {"attributes"},
    "POST /api/v1/vector_stores/{store_id}/file_batches": {"chunking_strategy", "attributes", "file_ids", "files"},
    "POST /api/v1/vector_stores/{store_id}/search": {"filters"},
    # bytes that decode as audio; granularities only with verbose_json, streams only as json or text (another
    # field); a language code Whisper knows; a model of the audio kind (or, translating, a multilingual one)
    "POST /api/v1/audio/transcriptions": {"file", "timestamp_granularities", "stream", "language", "model"},
    "POST /api/v1/audio/translations": {"file", "model"},
    # a voice the model has; text that holds something to speak; a model of the speech kind
    "POST /api/v1/audio/speech": {"voice", "input", "model"},
}


def _names_another_object(failure, case, response) -> bool:
    """A 404 after a POST that created the path's resource, which names an object given in the body (a file to
    add to the new vector store that the run deleted meanwhile): not the created resource missing."""
    if response.status_code != 404 or not isinstance(failure, EnsureResourceAvailability):
        return False
    try:
        param = response.json()["error"]["param"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(case.body, dict) and param in case.body


def _twisted_bare_400(response) -> bool:
    # Twisted, under daphne, parses a multipart body itself and answers one it cannot parse (a form with
    # no part at all) with a bare 400, no header and no body, before the request reaches the hub.
    return (response.status_code == 400 and not response.content and not response.headers
            and "multipart/form-data" in (response.request.headers.get("Content-Type") or ""))


def _whitespace_only(case, error: dict) -> bool:
    """A string of nothing but whitespace (in the body or the query: a cursor of one control character), which
    DRF trims to blank and refuses as such; a schema can say "not blank" (minLength) but not "not only
    whitespace" short of a pattern on every string."""
    param = error.get("param") or ""
    values = [_at(part, param.split(".")) for part in (case.body, case.query)]
    return (any(isinstance(value, str) and value != "" and not value.strip() for value in values)
            and "may not be blank" in error.get("message", ""))


def _at(value, path: list[str]):
    """The value at a dotted error path ("target_modules.1") inside a body, or None."""
    for key in path:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if _names_another_object(failure, case, response) or _twisted_bare_400(response):
        return False
    if response.status_code != 400 or not isinstance(failure, RejectedPositiveData):
        return True
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return True
    # A NUL character in a string is refused everywhere (DRF's rule; PostgreSQL text cannot hold one either),
    # which OpenAPI 3.0 has no way to say short of a pattern on every string.
    if "Null characters are not allowed" in error.get("message", ""):
        return False
    if _whitespace_only(case, error):
        return False
    param = (error.get("param") or "").split(".")[0]  # "shared_with.4" is shared_with's
    return param not in STATEFUL_REJECTIONS.get(f"{case.method.upper()} {case.operation.path}", set())
