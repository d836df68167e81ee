"""One application error type and one mapping to OpenAI's error shape.

Every API error leaves as `{"error": {"message", "type", "param", "code"}}`
with a fitting status, whether it came from a service (AppError), from DRF
(validation, parsing, auth) or from Django's URL resolver.
"""
from __future__ import annotations

from django.http import JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

from .json_input import JsonTextError


class AppError(Exception):
    """An error a client can act on, raised by services and views alike."""

    def __init__(self, message: str, *, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    def as_body(self) -> dict:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


class NotFoundError(AppError):
    def __init__(self, message: str, *, param: str | None = None, code: str = "not_found"):
        super().__init__(message, status=404, type="invalid_request_error", param=param, code=code)


class AuthenticationError(AppError):
    def __init__(self, message: str, code: str = "invalid_api_key"):
        super().__init__(message, status=401, type="authentication_error", code=code)


def error_object(message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> dict:
    """The inside of the error shape: what `error` events, request rows and worker replies carry."""
    return {"message": message, "type": type, "param": param, "code": code}


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": error_object(message, type=type, param=param, code=code)}


# HTTP status for the error codes workers report through event logs.
WORKER_ERROR_STATUS = {"context_length_exceeded": 400, "invalid_prompt": 400, "invalid_logit_bias": 400,
                       "invalid_value": 400, "model_not_supported": 400, "invalid_response_format": 400,
                       "invalid_api_key": 401, "model_not_found": 404, "insufficient_memory": 507, "timeout": 504,
                       "queue_timeout": 504, "time_limit_exceeded": 504,
                       # audio (workers/audio.py): a file that does not decode, lasts too long, a bad language/voice
                       "invalid_audio": 400, "audio_too_long": 400}


def app_error_from_event(error: dict) -> AppError:
    """An `error` event's payload as the AppError the API answers with (500 for codes not listed)."""
    return AppError(error["message"], status=WORKER_ERROR_STATUS.get(error.get("code"), 500), type=error["type"],
                    param=error.get("param"), code=error.get("code"))


def error_response(error: AppError) -> JsonResponse:
    """For plain (async) Django views, which DRF's handler does not reach."""
    return _with_headers(JsonResponse(error.as_body(), status=error.status), error)


def _with_headers(response, error: AppError):
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    if error.retry_after is not None:
        response["Retry-After"] = str(error.retry_after)
    return response


def first_validation_error(detail, path: str = "") -> tuple[str | None, str]:
    """Walk DRF's nested error detail to the first leaf: (param path, message)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "non_field_errors":
                return first_validation_error(value, path)
            return first_validation_error(value, f"{path}.{key}" if path else str(key))
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)):
                if value:
                    return first_validation_error(value, f"{path}.{index}" if path else str(index))
                continue
            return (path or None), str(value)
    return (path or None), str(detail)


def validation_error(exc: drf_exceptions.ValidationError) -> AppError:
    param, message = first_validation_error(exc.detail)
    text = f"{param}: {message}" if param else message
    return AppError(text, status=400, param=param, code="invalid_value")


def as_app_error(exc: Exception) -> AppError | None:
    if isinstance(exc, AppError):
        return exc
    if isinstance(exc, JsonTextError):  # valid JSON with a string the database cannot store
        return AppError(str(exc), param=exc.path or None, code="invalid_value")
    if isinstance(exc, drf_exceptions.ValidationError):
        return validation_error(exc)
    if isinstance(exc, drf_exceptions.ParseError):
        return AppError(f"We could not parse the JSON body of your request. ({exc.detail})",
                        code="invalid_json")
    if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
        return AuthenticationError(str(exc.detail))
    if isinstance(exc, drf_exceptions.PermissionDenied):
        code = exc.get_codes()
        code = code if isinstance(code, str) and code != "permission_denied" else "forbidden"
        return AppError(str(exc.detail), status=403, type="permission_error", code=code)
    if isinstance(exc, drf_exceptions.NotFound):
        return NotFoundError(str(exc.detail))
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        return AppError(str(exc.detail), status=405, code="method_not_allowed")
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        return AppError(str(exc.detail), status=415, code="unsupported_media_type")
    if isinstance(exc, drf_exceptions.Throttled):
        return AppError(str(exc.detail), status=429, type="rate_limit_error", code="rate_limit_exceeded")
    if isinstance(exc, drf_exceptions.APIException):
        return AppError(str(exc.detail), status=exc.status_code, type="api_error")
    return None


def drf_exception_handler(exc, context):
    from django.http import Http404

    if isinstance(exc, Http404):
        exc = NotFoundError("Not found.")
    error = as_app_error(exc)
    if error is None:
        return None  # a bug: let Django log it and answer 500
    return _with_headers(Response(error.as_body(), status=error.status), error)


def json_404(request, exception=None):
    return error_response(NotFoundError(f"Unknown URL: {request.path}", code="unknown_url"))


def json_500(request):
    return error_response(AppError("The server had an error while processing your request.",
                                   status=500, type="server_error", code="internal_error"))
