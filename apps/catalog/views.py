from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import Scope

from .selectors import model_get, model_list
from .serializers import ModelListSerializer, ModelSerializer
from .workers import known_queues, live_workers, queue_depths


def _loaded_ids() -> set[str]:
    return {model_id for worker in live_workers() for model_id in worker.loaded}


class ModelListView(APIView):
    @extend_schema(operation_id="models_list", responses=ModelListSerializer,
                   summary="List models (OpenAI shape, plus kind and state)")
    def get(self, request):
        context = {"loaded": _loaded_ids()}
        return Response({"object": "list", "data": ModelSerializer(model_list(), many=True, context=context).data})


class ModelDetailView(APIView):
    @extend_schema(responses=ModelSerializer, summary="Retrieve a model")
    def get(self, request, model_id: str):
        return Response(ModelSerializer(model_get(model_id=model_id), context={"loaded": _loaded_ids()}).data)


class ModelStatusView(APIView):
    required_scope = Scope.ADMIN

    @extend_schema(summary="Workers, their device memory and loaded models; queue depths (staff)",
                   responses=inline_serializer("ModelStatus", {"workers": serializers.ListField(),
                                                               "queues": serializers.DictField()}))
    def get(self, request):
        workers = live_workers()
        return Response({
            "workers": [_worker_status(w.raw) for w in workers],
            "queues": queue_depths(known_queues(workers)),
        })


def _worker_status(raw: dict) -> dict:
    keys = ("hostname", "queues", "control_queue", "device", "name", "memory_total_bytes", "memory_used_bytes",
            "process_bytes", "budget_bytes", "models_bytes", "max_models", "loaded_models", "current_task",
            "pid", "reported_at", "source")
    return {key: raw.get(key) for key in keys}
