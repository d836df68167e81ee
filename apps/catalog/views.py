from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from .selectors import model_get, model_list
from .serializers import ModelListSerializer, ModelSerializer


class ModelListView(APIView):
    @extend_schema(responses=ModelListSerializer, summary="List models (OpenAI shape)")
    def get(self, request):
        return Response({"object": "list", "data": ModelSerializer(model_list(), many=True).data})


class ModelDetailView(APIView):
    @extend_schema(responses=ModelSerializer, summary="Retrieve a model")
    def get(self, request, model_id: str):
        return Response(ModelSerializer(model_get(model_id=model_id)).data)
