from asgiref.sync import sync_to_async
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from apps.accounts.models import Scope
from apps.core.endpoints import Endpoint, list_of, operation

from .load_unload import model_command
from .selectors import model_get, model_list
from .serializers import (
    ModelCommandResultSerializer,
    ModelDeletedSerializer,
    ModelLoadSerializer,
    ModelSerializer,
    ModelUnloadSerializer,
    ModelUpdateSerializer,
)
from .services import model_delete, model_visibility_set
from .worker_registry import known_queues, live_workers, queue_depths

NOT_FOUND = "model_not_found: no such model, or another user's model you may not use (the two are indistinguishable)"
NOT_YOURS = ("operator_model (operator models are managed by the operator) or not_model_owner (a model shared "
             "with you is not yours to change)")


def _context(request) -> dict:
    loaded = {model_id for worker in live_workers() for model_id in worker.loaded}
    return {"user": request.user, "key": request.auth, "loaded": loaded}


class ModelListView(Endpoint):
    @operation(operation_id="models_list", responses=list_of(ModelSerializer, "ModelList"),
               summary="List the models you may use (OpenAI shape, plus kind, state and visibility)",
               description="Operator models, your own fine-tunes, and other users' fine-tunes shared with you "
                           "or public. Staff with an admin-scope key see every model.")
    def get(self, request):
        models = model_list(user=request.user, key=request.auth).select_related("owner").prefetch_related(
            "shared_with")
        return Response({"object": "list", "data": ModelSerializer(models, many=True, context=_context(request)).data})


class ModelDetailView(Endpoint):
    @operation(responses=ModelSerializer, errors={404: NOT_FOUND}, summary="Retrieve a model you may use")
    def get(self, request, model_id: str):
        entry = model_get(user=request.user, key=request.auth, model_id=model_id)
        return Response(ModelSerializer(entry, context=_context(request)).data)

    @operation(request=ModelUpdateSerializer, responses=ModelSerializer, errors={403: NOT_YOURS, 404: NOT_FOUND},
               summary="Change who may use your fine-tuned model",
               description="The owner (or staff with an admin-scope key): visibility private (the owner "
                           "only), shared (the owner and the users in shared_with) or public (every user).")
    def patch(self, request, model_id: str, data):
        entry = model_visibility_set(user=request.user, key=request.auth, model_id=model_id, **data)
        return Response(ModelSerializer(entry, context=_context(request)).data)

    @operation(responses={200: ModelDeletedSerializer}, errors={403: NOT_YOURS, 404: NOT_FOUND},
               summary="Delete your fine-tuned model",
               description="Removes it from the catalog, from every worker serving it and its adapter from "
                           "disk; requests still queued for it fail with model_not_found. Operator models "
                           "cannot be deleted through the API.")
    def delete(self, request, model_id: str):
        model_delete(user=request.user, key=request.auth, model_id=model_id)
        return Response({"id": model_id, "object": "model", "deleted": True})


class ModelStatusView(Endpoint):
    required_scope = Scope.ADMIN

    @operation(summary="Workers, their device memory and loaded models; queue depths (staff)",
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


# Loading waits for the worker (seconds): async handlers, so no thread waits with it.
class ModelLoadView(Endpoint):
    required_scope = Scope.ADMIN

    @operation(operation_id="models_load", request=ModelLoadSerializer, responses=ModelCommandResultSerializer,
               summary="Load a model on a worker (staff): the one named, the one holding it, or the one with "
                       "the most free memory",
               errors={404: f"{NOT_FOUND}; worker_not_found: no live worker of that name",
                       503: "no_worker: no inference worker is running", 500: None, 504: None, 507: None})
    async def post(self, request, data):
        entry = await sync_to_async(model_get)(user=request.user, key=request.auth, model_id=data["model_id"])
        result = await model_command("load", entry, keep_alive=data.get("keep_alive"),
                                     force_reload=data["force_reload"], worker_name=data.get("worker"))
        return Response({"model_id": entry.id, **result})


class ModelUnloadView(Endpoint):
    required_scope = Scope.ADMIN

    @operation(operation_id="models_unload", request=ModelUnloadSerializer, responses=ModelCommandResultSerializer,
               summary="Unload a model from every worker holding it (staff)",
               errors={404: NOT_FOUND, 500: None, 504: None})
    async def post(self, request, data):
        entry = await sync_to_async(model_get)(user=request.user, key=request.auth, model_id=data["model_id"])
        return Response({"model_id": entry.id, **await model_command("unload", entry)})
