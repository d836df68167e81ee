from rest_framework import serializers

from .models import ModelEntry


class ModelSerializer(serializers.ModelSerializer):
    object = serializers.SerializerMethodField()
    created = serializers.SerializerMethodField()

    class Meta:
        model = ModelEntry
        fields = ["id", "object", "created", "owned_by", "kind", "context_length", "size_bytes"]

    def get_object(self, obj) -> str:
        return "model"

    def get_created(self, obj) -> int:
        return int(obj.created_at.timestamp())


class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = ModelSerializer(many=True)
