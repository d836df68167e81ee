"""OpenAPI for the async chat completions view, which drf-spectacular cannot inspect.

Added by a spectacular postprocessing hook so /docs shows the endpoint users
care about most beside the DRF views.
"""
from .serializers import RESPONSE_FORMAT_SCHEMA

_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
        "content": {"oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "object", "required": ["type", "text"], "properties": {
                "type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}},
        ]},
        "name": {"type": "string"},
    },
}

_REQUEST = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "model": {"type": "string", "description": "A model id from GET /api/v1/models; default: the hub's default."},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "stream": {"type": "boolean", "default": False},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 1},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 1},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "maxItems": 4, "items": {"type": "string"}}]},
        "seed": {"type": "integer"},
        "user": {"type": "string"},
        "n": {"type": "integer", "enum": [1]},
        "conversation_id": {"type": "string", "format": "uuid",
                            "description": "AI Hub extension: continue a stored conversation."},
        "response_format": RESPONSE_FORMAT_SCHEMA,
        "ignore_eos": {"type": "boolean", "default": False,
                       "description": "vLLM extension: generate exactly max_tokens tokens (benchmarks)."},
    },
}

_USAGE = {"type": "object", "properties": {k: {"type": "integer"} for k in
                                            ("prompt_tokens", "completion_tokens", "total_tokens")}}

_COMPLETION = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["chat.completion"]},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"},
            "message": {"type": "object", "properties": {"role": {"type": "string"}, "content": {"type": "string"}}},
            "finish_reason": {"type": "string", "enum": ["stop", "length", "cancelled"]},
        }}},
        "usage": _USAGE,
        "conversation_id": {"type": "string", "format": "uuid"},
    },
}

_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "type": {"type": "string"},
    "param": {"type": "string", "nullable": True}, "code": {"type": "string", "nullable": True}}}}}


def add_chat_completions_path(result, generator, request, public):
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components.update({"ChatCompletionRequest": _REQUEST, "ChatCompletion": _COMPLETION, "Error": _ERROR})
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    result.setdefault("paths", {})["/api/v1/chat/completions"] = {"post": {
        "operationId": "chat_completions_create",
        "summary": "Create a chat completion (OpenAI-compatible; SSE when stream is true)",
        "tags": ["chat"],
        "security": [{"ApiKey": []}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}},
        "responses": {
            "200": {
                "description": "A chat.completion object, or with stream=true a text/event-stream of "
                               "chat.completion.chunk objects ending with `data: [DONE]`.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
                            "text/event-stream": {"schema": {"type": "string"}}},
            },
            "400": {"description": "Invalid request", **error},
            "401": {"description": "Missing, wrong or revoked API key", **error},
            "404": {"description": "Unknown model or conversation", **error},
        },
    }}
    return result
