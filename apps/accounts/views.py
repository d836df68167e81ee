from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.catalog.selectors import model_get

from .services import preferred_model_get, preferred_model_set


class MeSerializer(serializers.Serializer):
    username = serializers.CharField(read_only=True)
    is_staff = serializers.BooleanField(read_only=True)
    preferred_model = serializers.CharField(allow_null=True, allow_blank=True, required=False,
                                            help_text="Used for model=auto when it suits the task and fits.")


class MeView(APIView):
    def _body(self, user):
        return {"username": user.username, "is_staff": user.is_staff,
                "preferred_model": preferred_model_get(user=user)}

    @extend_schema(summary="Your account and settings", responses=MeSerializer)
    def get(self, request):
        return Response(self._body(request.user))

    @extend_schema(summary="Change your settings", request=MeSerializer, responses=MeSerializer)
    def patch(self, request):
        serializer = MeSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        if "preferred_model" in serializer.validated_data:
            model_id = serializer.validated_data["preferred_model"] or None
            if model_id:
                model_get(model_id=model_id)  # 404 for an unknown model
            preferred_model_set(user=request.user, model_id=model_id)
        return Response(self._body(request.user))
