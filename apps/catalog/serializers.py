from django.conf import settings
from rest_framework import serializers

from .models import ModelEntry, Visibility
from .selectors import model_may_manage

# What a user who may use another user's model (shared or public) reads as its owner: not their name.
NEUTRAL_OWNER = "user"


class ModelSerializer(serializers.ModelSerializer):
    """One model as the caller may see it; the context carries `user`, `key` and the `loaded` ids."""

    object = serializers.SerializerMethodField()
    created = serializers.SerializerMethodField()
    owned_by = serializers.SerializerMethodField(
        help_text="'aihub' (or the operator's name) for an operator model; for a fine-tune, its owner's "
                  f"username to the owner and staff, '{NEUTRAL_OWNER}' to everyone else.")
    visibility = serializers.SerializerMethodField(help_text="private, shared or public (operator models: public)")
    shared_with = serializers.SerializerMethodField(
        help_text="Usernames the model is shared with; shown to its owner and staff only (null otherwise).")
    loaded = serializers.SerializerMethodField()
    estimated_bytes = serializers.SerializerMethodField()

    class Meta:
        model = ModelEntry
        fields = ["id", "object", "created", "owned_by", "visibility", "shared_with", "kind", "capabilities",
                  "context_length", "dtype", "quantization", "parameter_count", "size_bytes", "estimated_bytes",
                  "loaded", "tool_calling", "tool_parser"]

    def _manages(self, obj) -> bool:
        return model_may_manage(entry=obj, user=self.context["user"], key=self.context.get("key"))

    def get_owned_by(self, obj) -> str:
        if obj.owner_id is None:
            return obj.owned_by
        return obj.owner.username if self._manages(obj) else NEUTRAL_OWNER

    def get_visibility(self, obj) -> str:
        return obj.effective_visibility

    def get_shared_with(self, obj) -> list[str] | None:
        if not self._manages(obj):
            return None
        return sorted(user.username for user in obj.shared_with.all())

    def get_loaded(self, obj) -> bool:
        return obj.id in self.context.get("loaded", ())

    def get_estimated_bytes(self, obj) -> dict:
        return obj.estimated_bytes_by_device()

    def get_object(self, obj) -> str:
        return "model"

    def get_created(self, obj) -> int:
        return int(obj.created_at.timestamp())


class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = ModelSerializer(many=True)


class ModelUpdateSerializer(serializers.Serializer):
    visibility = serializers.ChoiceField(choices=Visibility.choices, required=False,
                                         help_text="private: you only; shared: you and shared_with; public: all")
    shared_with = serializers.ListField(
        child=serializers.CharField(max_length=150), required=False, max_length=settings.AIHUB_MODEL_SHARE_MAX_USERS,
        help_text="Usernames who may use the model while it is shared (replaces the list; unknown names: 400).")


class ModelDeletedSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="model")
    deleted = serializers.BooleanField()
