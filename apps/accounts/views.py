from rest_framework import serializers
from rest_framework.response import Response

from apps.chat.message_embeddings import conversation_embeddings_set, user_embeddings_enabled
from apps.core.endpoints import Endpoint, list_of, operation
from apps.core.fields import StrictBooleanField, StrictCharField, StrictIntegerField

from .models import ApiKey, Scope
from .services import MINTABLE_LIMITS, api_key_mint, api_key_revoke, preferred_model_get, preferred_model_set


class MeSerializer(serializers.Serializer):
    username = serializers.CharField(read_only=True)
    is_staff = serializers.BooleanField(read_only=True)
    preferred_model = StrictCharField(allow_null=True, allow_blank=True, required=False,
                                            help_text="Used for model=auto when it suits the task and fits.")
    conversation_embeddings = StrictBooleanField(
        required=False, help_text="Embed your messages for conversation search (false: words only, and the "
                                  "vectors already made are deleted).")


class MeView(Endpoint):
    required_scope = None

    def _body(self, user):
        return {"username": user.username, "is_staff": user.is_staff,
                "preferred_model": preferred_model_get(user=user),
                "conversation_embeddings": user_embeddings_enabled(user_id=user.id)}

    @operation(summary="Your account and settings", responses=MeSerializer)
    def get(self, request):
        return Response(self._body(request.user))

    @operation(summary="Change your settings", request=MeSerializer, responses=MeSerializer,
               errors={404: "model_not_found: preferred_model is no model you may use"})
    def patch(self, request, data):
        if "preferred_model" in data:
            preferred_model_set(user=request.user, key=request.auth, model_id=data["preferred_model"] or None)
        if "conversation_embeddings" in data:
            conversation_embeddings_set(user=request.user, enabled=data["conversation_embeddings"])
        return Response(self._body(request.user))


class ApiKeySerializer(serializers.ModelSerializer):
    prefix = serializers.CharField(source="display_prefix", read_only=True)
    active = serializers.BooleanField(source="is_active", read_only=True)

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "scopes", "created_at", "last_used_at", "expires_at", "revoked_at", "active",
                  "parent", *MINTABLE_LIMITS]


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key itself: shown here only, never again.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]


class ApiKeyCreateSerializer(serializers.Serializer):
    name = StrictCharField(required=False, allow_blank=True, max_length=100, default="")
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.values), required=False,
                                   allow_empty=False,
                                   help_text="Default and at most: the calling key's scopes. Each is stored once "
                                             "(a repeated one is the same power).")
    expires_in_days = StrictIntegerField(required=False, min_value=1, max_value=3650,
                                               help_text="Default: the calling key's expiry (or none); never later.")
    requests_per_minute = StrictIntegerField(required=False, min_value=0, max_value=2**31 - 1)
    tokens_per_minute = StrictIntegerField(required=False, min_value=0, max_value=2**31 - 1)
    max_concurrent_generations = StrictIntegerField(required=False, min_value=0, max_value=2**31 - 1)
    token_budget = StrictIntegerField(required=False, min_value=0, max_value=2**63 - 1,
                                            help_text="Tokens per the family's budget period.")


class ApiKeyListView(Endpoint):
    required_scope = None  # any valid key manages its own user's keys

    @operation(operation_id="keys_list", summary="Your API keys (never their secrets)",
               responses=list_of(ApiKeySerializer, "ApiKeyList"))
    def get(self, request):
        keys = ApiKey.objects.filter(user=request.user)
        return Response({"object": "list", "data": ApiKeySerializer(keys, many=True).data})

    @operation(summary="Create a key within this key's powers: the response is the only time it is shown",
               request=ApiKeyCreateSerializer, responses={201: ApiKeyCreatedSerializer},
               errors={403: "insufficient_scope or beyond_key_powers: wider than the calling key; forbidden: "
                            "admin scope for a user who is not staff"})
    def post(self, request, data):
        key, raw = api_key_mint(parent=request.auth, name=data["name"], scopes=data.get("scopes"),
                                expires_in_days=data.get("expires_in_days"),
                                limits={name: data[name] for name in MINTABLE_LIMITS if name in data})
        return Response({**ApiKeySerializer(key).data, "key": raw}, status=201)


class ApiKeyDetailView(Endpoint):
    required_scope = None

    @operation(summary="Revoke one of your keys: refused at once, its running requests stopped",
               responses={200: ApiKeySerializer})
    def delete(self, request, key_id: int):
        return Response(ApiKeySerializer(api_key_revoke(user=request.user, key_id=key_id)).data)
