"""Hooks for the schemathesis run of tests/test_openapi_conformance.py (loaded through SCHEMATHESIS_HOOKS).

Chat completions are fuzzed for real, but on the tiny model and with a few tokens, so that hundreds of
generated requests take seconds. Only values that were already valid are changed, so a case generated
to be invalid stays invalid.
"""
import schemathesis

TINY_MODEL = "tiny:chat"
MAX_TOKENS = 4


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if case.operation.path != "/api/v1/chat/completions" or not isinstance(body, dict):
        return
    model = body.get("model")
    if "model" not in body or (isinstance(model, str) and 1 <= len(model) <= 200):
        body["model"] = TINY_MODEL
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
            body[name] = MAX_TOKENS
