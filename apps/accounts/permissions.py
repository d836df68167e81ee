from rest_framework.permissions import BasePermission

from .models import Scope


class KeyScope(BasePermission):
    """The request's API key must carry the view's `required_scope` (default: inference; None: any key)."""

    message = "This API key lacks the scope this endpoint needs."
    code = "insufficient_scope"

    def has_permission(self, request, view):
        scope = getattr(view, "required_scope", Scope.INFERENCE)
        if scope is None:
            return True
        key = request.auth
        if key is None or not key.has_scope(scope):
            self.message = f"This API key lacks the '{scope}' scope."
            return False
        return True
