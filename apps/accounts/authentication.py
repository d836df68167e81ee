from rest_framework import authentication, exceptions

from .services import api_key_authenticate, bearer_token


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <key>` for DRF views."""

    def authenticate(self, request):
        header = request.headers.get("Authorization")
        if not header:
            return None
        raw = bearer_token(header)
        key = api_key_authenticate(raw_key=raw) if raw else None
        if key is None:
            raise exceptions.AuthenticationFailed("Incorrect API key provided, or the key was revoked.")
        return key.user, key

    def authenticate_header(self, request):
        # Makes DRF answer 401 (not 403) when no credentials were sent.
        return 'Bearer realm="api"'
