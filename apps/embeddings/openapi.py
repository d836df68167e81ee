"""OpenAPI for the async embeddings view, which drf-spectacular cannot inspect (as apps/chat/openapi.py).

Kept beside EmbeddingRequestSerializer until the shared request pipeline derives it from the serializer.
"""

_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}

_REQUEST = {
    "type": "object",
    "required": ["input"],
    "additionalProperties": False,
    "properties": {
        "input": {"oneOf": [{"type": "string", "minLength": 1},
                            {"type": "array", "minItems": 1, "maxItems": 2048,
                             "items": {"type": "string", "minLength": 1}},
                            _TOKENS,
                            {"type": "array", "minItems": 1, "maxItems": 2048, "items": _TOKENS}]},
        "model": {"type": "string", "description": "An embedding model; default AIHUB_DEFAULT_EMBEDDING_MODEL."},
        "encoding_format": {"type": "string", "enum": ["float", "base64"], "default": "float"},
        "dimensions": {"type": "integer", "minimum": 1,
                       "description": "Only for models whose catalog entry has supports_dimensions."},
        "user": {"type": "string"},
    },
}

_RESPONSE = {
    "type": "object",
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {"type": "array", "items": {"type": "object", "properties": {
            "object": {"type": "string", "enum": ["embedding"]},
            "index": {"type": "integer"},
            "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}},
                                    {"type": "string", "description": "base64 of little-endian float32"}]},
        }}},
        "model": {"type": "string"},
        "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"},
                                                   "total_tokens": {"type": "integer"}}},
    },
}


def add_embeddings_path(result, generator, request, public):
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components.update({"EmbeddingRequest": _REQUEST, "EmbeddingList": _RESPONSE})
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    result.setdefault("paths", {})["/api/v1/embeddings"] = {"post": {
        "operationId": "embeddings_create",
        "summary": "Create embeddings (OpenAI-compatible)",
        "tags": ["embeddings"],
        "security": [{"ApiKey": []}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/EmbeddingRequest"}}}},
        "responses": {
            "200": {"description": "One embedding per input, in order",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingList"}}}},
            "400": {"description": "Invalid request (the param names the field)", **error},
            "401": {"description": "Missing, wrong or revoked API key", **error},
            "404": {"description": "Unknown model", **error},
            "429": {"description": "A limit or budget of the key", **error},
        },
    }}
    return result
