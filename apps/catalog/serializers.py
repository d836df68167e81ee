from rest_framework import serializers

from .models import ModelEntry


class ModelSerializer(serializers.ModelSerializer):
    object = serializers.SerializerMethodField()
    created = serializers.SerializerMethodField()
    loaded = serializers.SerializerMethodField()
    estimated_bytes = serializers.SerializerMethodField()

    class Meta:
        model = ModelEntry
        fields = ["id", "object", "created", "owned_by", "kind", "capabilities", "context_length", "dtype",
                  "quantization", "parameter_count", "size_bytes", "estimated_bytes", "loaded"]

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
