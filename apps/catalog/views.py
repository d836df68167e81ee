from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import Scope

from .selectors import model_get, model_list
from .serializers import ModelDeletedSerializer, ModelListSerializer, ModelSerializer, ModelUpdateSerializer
from .services import model_delete, model_visibility_set
from .workers import known_queues, live_workers, queue_depths

NOT_FOUND = OpenApiResponse(description="model_not_found: no such model, or another user's model you may not use "
                                        "(the two are indistinguishable)")
NOT_YOURS = OpenApiResponse(description="operator_model (operator models are managed by the operator) or "
                                        "not_model_owner (a model shared with you is not yours to change)")


def _context(request) -> dict:
    loaded = {model_id for worker in live_workers() for model_id in worker.loaded}
    return {"user": request.user, "key": request.auth, "loaded": loaded}


class ModelListView(APIView):
    @extend_schema(operation_id="models_list", responses=ModelListSerializer,
                   summary="List the models you may use (OpenAI shape, plus kind, state and visibility)",
                   description="Operator models, your own fine-tunes, and other users' fine-tunes shared with you "
                               "or public. Staff with an admin-scope key see every model.")
    def get(self, request):
        models = model_list(user=request.user, key=request.auth).select_related("owner").prefetch_related(
            "shared_with")
        return Response({"object": "list", "data": ModelSerializer(models, many=True, context=_context(request)).data})


class ModelDetailView(APIView):
    @extend_schema(responses={200: ModelSerializer, 404: NOT_FOUND}, summary="Retrieve a model you may use")
    def get(self, request, model_id: str):
        entry = model_get(user=request.user, key=request.auth, model_id=model_id)
        return Response(ModelSerializer(entry, context=_context(request)).data)

    @extend_schema(request=ModelUpdateSerializer, responses={200: ModelSerializer, 403: NOT_YOURS, 404: NOT_FOUND},
                   summary="Change who may use your fine-tuned model",
                   description="The owner (or staff with an admin-scope key): visibility private (the owner "
                               "only), shared (the owner and the users in shared_with) or public (every user).")
    def patch(self, request, model_id: str):
        serializer = ModelUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        entry = model_visibility_set(user=request.user, key=request.auth, model_id=model_id,
                                     **serializer.validated_data)
        return Response(ModelSerializer(entry, context=_context(request)).data)

    @extend_schema(responses={200: ModelDeletedSerializer, 403: NOT_YOURS, 404: NOT_FOUND},
                   summary="Delete your fine-tuned model",
                   description="Removes it from the catalog, from every worker serving it and its adapter from "
                               "disk; requests still queued for it fail with model_not_found. Operator models "
                               "cannot be deleted through the API.")
    def delete(self, request, model_id: str):
        model_delete(user=request.user, key=request.auth, model_id=model_id)
        return Response({"id": model_id, "object": "model", "deleted": True})


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
            "process_bytes", "budget_bytes", "models_bytes", "max_models", "loaded_models", "batch",
            "pid", "reported_at", "source")
    return {key: raw.get(key) for key in keys}
