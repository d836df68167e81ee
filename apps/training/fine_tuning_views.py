"""/api/v1/fine_tuning/jobs…: OpenAI's fine-tuning paths over the same jobs as /training/jobs.

`client.fine_tuning.jobs.create/list/retrieve/cancel/list_events` and
`client.fine_tuning.jobs.checkpoints.list` of the official SDK work unchanged.
The views only translate: the training services and selectors do the work.
"""
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from .fine_tuning_serializers import (
    FineTuningCheckpointSerializer,
    FineTuningEventSerializer,
    FineTuningJobCreateSerializer,
    FineTuningJobSerializer,
    ListQuerySerializer,
    page_body,
    unsupported_parameter,
)
from .selectors import training_checkpoints_page, training_events_page, training_job_get, training_jobs_page
from .services import event_body, fine_tuning_job_create, training_job_cancel
from .views import TrainingView


def _page_schema(name: str, item) -> serializers.Serializer:
    return inline_serializer(name, {"object": serializers.CharField(), "data": item(many=True),
                                    "has_more": serializers.BooleanField()})


def _query(request, default_limit: int) -> tuple[str | None, int]:
    extra = sorted(set(request.query_params) - set(ListQuerySerializer().fields))
    if extra:  # e.g. OpenAI's metadata filter: refused by name, never ignored
        raise unsupported_parameter(extra[0], "is not supported by this hub's list calls.")
    query = ListQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data.get("after"), query.validated_data.get("limit", default_limit)


class FineTuningJobListView(TrainingView):
    @extend_schema(operation_id="fine_tuning_jobs_list", summary="Your fine-tuning jobs, newest first (OpenAI)",
                   parameters=[ListQuerySerializer],
                   responses=_page_schema("FineTuningJobPage", FineTuningJobSerializer))
    def get(self, request):
        after, limit = _query(request, default_limit=20)
        jobs, has_more = training_jobs_page(user=request.user, after=after, limit=limit)
        return Response(page_body(FineTuningJobSerializer(jobs, many=True).data, has_more=has_more))

    @extend_schema(operation_id="fine_tuning_jobs_create", summary="Create a fine-tuning job (OpenAI)",
                   request=FineTuningJobCreateSerializer, responses={200: FineTuningJobSerializer})
    def post(self, request):
        serializer = FineTuningJobCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        job = fine_tuning_job_create(user=request.user, api_key=request.auth, data=serializer.validated_data)
        return Response(FineTuningJobSerializer(job).data)  # OpenAI answers 200, not 201


class FineTuningJobDetailView(TrainingView):
    @extend_schema(operation_id="fine_tuning_jobs_retrieve", summary="A fine-tuning job (OpenAI)",
                   responses=FineTuningJobSerializer)
    def get(self, request, job_id):
        return Response(FineTuningJobSerializer(training_job_get(user=request.user, job_id=job_id)).data)


class FineTuningJobCancelView(TrainingView):
    @extend_schema(operation_id="fine_tuning_jobs_cancel", summary="Cancel a fine-tuning job (OpenAI)",
                   request=None, responses=FineTuningJobSerializer)
    def post(self, request, job_id):
        return Response(FineTuningJobSerializer(training_job_cancel(user=request.user, job_id=job_id)).data)


class FineTuningJobEventsView(TrainingView):
    @extend_schema(operation_id="fine_tuning_jobs_events", summary="A job's events, newest first (OpenAI)",
                   parameters=[ListQuerySerializer],
                   responses=_page_schema("FineTuningEventPage", FineTuningEventSerializer))
    def get(self, request, job_id):
        job = training_job_get(user=request.user, job_id=job_id)
        after, limit = _query(request, default_limit=20)
        page, has_more = training_events_page(job=job, after=after, limit=limit)
        return Response(page_body([event_body(event) for event in page], has_more=has_more))


class FineTuningJobCheckpointsView(TrainingView):
    @extend_schema(operation_id="fine_tuning_jobs_checkpoints", summary="A job's checkpoints, newest first (OpenAI)",
                   parameters=[ListQuerySerializer],
                   responses=_page_schema("FineTuningCheckpointPage", FineTuningCheckpointSerializer))
    def get(self, request, job_id):
        job = training_job_get(user=request.user, job_id=job_id)
        after, limit = _query(request, default_limit=10)
        page, has_more = training_checkpoints_page(job=job, after=after, limit=limit)
        return Response(page_body(FineTuningCheckpointSerializer(page, many=True).data, has_more=has_more))
