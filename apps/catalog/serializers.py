from django.conf import settings
from rest_framework import serializers

from apps.core.fields import KeepAliveField, StrictBooleanField, StrictCharField

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
                  "loaded", "embedding_dimensions", "pooling", "supports_dimensions", "tool_calling",
                  "tool_parser"]

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
        child=StrictCharField(max_length=150), required=False, max_length=settings.AIHUB_MODEL_SHARE_MAX_USERS,
        help_text="Usernames who may use the model while it is shared (replaces the list; unknown names: 400).")


class ModelDeletedSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="model")
    deleted = serializers.BooleanField()


class ModelUnloadSerializer(serializers.Serializer):
    model_id = StrictCharField(max_length=200, help_text="The model to unload from every worker holding it.")


class ModelLoadSerializer(serializers.Serializer):
    model_id = StrictCharField(max_length=200, help_text="The model to load.")
    keep_alive = KeepAliveField(
        required=False, allow_null=True,
        help_text="Seconds it stays loaded while idle (-1 pins it, 0 unloads after the next request); "
                  "default: the worker's AIHUB_KEEP_ALIVE_SECONDS.")
    force_reload = StrictBooleanField(required=False, default=False,
                                      help_text="Load it again even when it is loaded (new weights on disk).")
    worker = StrictCharField(required=False, allow_null=True, max_length=300,
                             help_text="A live worker's hostname: load it there (default: the hub chooses).")


class ModelCommandResultSerializer(serializers.Serializer):
    model_id = serializers.CharField()
    status = serializers.CharField(help_text="load: loaded or already_loaded; unload: unloaded or not_loaded")
    workers = serializers.ListField(child=serializers.CharField(), help_text="The workers acted on.")
    worker = serializers.CharField(required=False, help_text="load: the worker that holds the model.")
    model = serializers.DictField(required=False, help_text="load: the worker's view of the loaded model.")
    reason = serializers.CharField(required=False, help_text="load: why that worker was chosen.")
