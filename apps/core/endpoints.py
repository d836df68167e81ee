"""One request pipeline for every endpoint: method, API key, scope, body, validation, errors and OpenAPI.

An endpoint is an `Endpoint` (a DRF APIView) whose handlers carry `@operation`:

    class ThingView(Endpoint):
        required_scope = "inference"            # None: any valid key; the default is inference

        @operation(summary="Make a thing", request=ThingCreateSerializer, responses={201: ThingSerializer},
                   errors={409: "thing_exists: ..."})
        async def post(self, request, data):    # or a plain def; `data` is the validated body
            ...

The steps, in order, and who does each (the same for sync and async handlers):
- method: DRF's dispatch (405 with `Allow`);
- API key and scope: the authentication and permission classes named in settings.REST_FRAMEWORK
  (this package does not import the accounts app: authentication plugs in there);
- body: the bounded JSON parser (apps/core/parsers.py), 400 `invalid_json`; the request's size was
  bounded before Django read it (request_size.py, 413);
- parameters: a key the serializer does not declare is a 400 `unsupported_parameter` naming it
  (parameters.py); query parameters likewise when the operation declares a `query` serializer;
- validation: the serializer, its first error as a 400 naming the field;
- errors: every exception leaves through one handler in OpenAI's error shape (errors.py);
- OpenAPI: the same serializers, the error shape and the status codes (openapi.py), so the
  schema cannot drift from what the code accepts.

Why our own small async dispatch rather than adrf: adrf (0.1.x) replaces DRF's Request and the
authentication, permission and throttle steps with async variants of its own, so every policy class
(ours and DRF's) would run through a second implementation that must keep pace with each DRF and
drf-spectacular release. Here DRF's own `initial()` (authentication, permissions, throttles) runs
unchanged in one `sync_to_async` hop, on the request's own thread, then the async handler is awaited
on the event loop: the part of adrf we need, in twenty lines, and one dependency less. (adrf was not
installed or measured here.) Long requests (a whole chat completion, a model load) must stay async:
a sync view holds one of the web process's threads until its answer is complete.
"""
from __future__ import annotations

import functools
import inspect

from asgiref.sync import sync_to_async
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.views import APIView

from .errors import AppError
from .parameters import refuse_undeclared


class Endpoint(APIView):
    """A DRF view whose handlers may be `async def`: then the whole request stays off daphne's threads."""

    def dispatch(self, request, *args, **kwargs):
        # Django's View.as_view marks the view a coroutine function when every handler is async
        # (view_is_async): then this returns the coroutine for Django to await.
        if self.view_is_async:
            return self._dispatch_async(request, *args, **kwargs)
        return super().dispatch(request, *args, **kwargs)

    async def _dispatch_async(self, request, *args, **kwargs):
        """DRF's dispatch, with the sync policy steps on the request's thread and the handler awaited."""
        self.args, self.kwargs = args, kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            # Authentication reads the database: not on the event loop every stream shares.
            await sync_to_async(self.initial)(request, *args, **kwargs)
            method = request.method.lower()
            handler = getattr(self, method, None) if method in self.http_method_names else None
            response = (handler or self.http_method_not_allowed)(request, *args, **kwargs)
            if inspect.isawaitable(response):
                response = await response
        except Exception as exc:  # noqa: BLE001 - DRF's handle_exception re-raises what it does not map
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response


def validated_input(request, serializer_class, data, *, what: str = "body") -> dict:
    """`data` checked against `serializer_class`: undeclared keys refused by name, then validated."""
    if not isinstance(data, dict):
        raise AppError(f"The request {what} must be a JSON object.", code="invalid_json")
    serializer = serializer_class(data=data, context={"request": request})
    refuse_undeclared(serializer, data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _form_values(form) -> dict:
    """A form's fields; `name[]` ones (how OpenAI's SDKs send an array in a form) as the list `name`."""
    return {key[:-2] if key.endswith("[]") else key: form.getlist(key) if key.endswith("[]") else form[key]
            for key in form.keys()}


def _request_input(request, body_serializer, query_serializer) -> dict:
    values = {}
    if query_serializer is not None:
        values["query"] = validated_input(request, query_serializer, request.query_params.dict(), what="query")
    if body_serializer is not None:
        body = request.data  # parsed here: bounded, and off the event loop for async handlers
        if hasattr(body, "dict"):  # a form (multipart): the serializer sees its plain values
            body = {**_form_values(body), **request.FILES.dict()}
        values["data"] = validated_input(request, body_serializer, body)
    return values


def operation(*, summary: str, request=None, query=None, responses=None, errors=None, operation_id=None,
              description=None, tags=None, media_type: str | None = None):
    """Declare a handler's operation once: its input serializers, its answers and its errors.

    `request` (a serializer class) validates the body and reaches the handler as `data`; `query` the
    query string, as `query`. `errors` maps the status codes the operation itself raises to a
    description (or lists them); the ones every endpoint shares (400 for bad input, 401/403 for the
    key, 404 for an object named in the path, 413 for a body too big) are added by openapi.py.
    `media_type` documents a body that is not JSON (a multipart upload).
    """
    schema_request = {media_type: request} if media_type and request is not None else request
    schema_kwargs = dict(summary=summary, request=schema_request, responses=responses, operation_id=operation_id,
                         description=description, tags=tags, parameters=[query] if query is not None else None)
    schema_kwargs = {name: value for name, value in schema_kwargs.items() if value is not None}
    schema_kwargs["request"] = schema_request  # None: the operation takes no body

    def decorate(handler):
        if inspect.iscoroutinefunction(handler):
            @functools.wraps(handler)
            async def wrapper(self, request_, *args, **kwargs):
                if request is not None or query is not None:
                    kwargs.update(await sync_to_async(_request_input)(request_, request, query))
                return await handler(self, request_, *args, **kwargs)
        else:
            @functools.wraps(handler)
            def wrapper(self, request_, *args, **kwargs):
                return handler(self, request_, *args, **kwargs, **_request_input(request_, request, query))
        wrapper.operation_errors = dict.fromkeys(errors, None) if isinstance(errors, (list, tuple, set)) \
            else dict(errors or {})
        wrapper.operation_input = {"body": request, "query": query}
        return extend_schema(**schema_kwargs)(wrapper)
    return decorate


def list_of(item_serializer, name: str) -> type[serializers.Serializer]:
    """The `{"object": "list", "data": [...], "has_more"}` envelope of a list endpoint, for its schema."""
    return type(name, (serializers.Serializer,), {
        "object": serializers.CharField(default="list"),
        "data": item_serializer(many=True),
        "has_more": serializers.BooleanField(required=False),
    })
