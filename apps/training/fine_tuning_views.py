"""/api/v1/fine_tuning/jobs…: OpenAI's fine-tuning paths over the same jobs as /training/jobs.

`client.fine_tuning.jobs.create/list/retrieve/cancel/list_events` and
`client.fine_tuning.jobs.checkpoints.list` of the official SDK work unchanged.
The views only translate: the training services and selectors do the work.
A query parameter the list calls do not declare (OpenAI's `metadata` filter)
is refused by name by the pipeline.
"""
from rest_framework.response import Response

from apps.core.endpoints import list_of, operation

from .fine_tuning_serializers import (
    FineTuningCheckpointSerializer,
    FineTuningEventSerializer,
    FineTuningJobCreateSerializer,
    FineTuningJobSerializer,
    ListQuerySerializer,
    page_body,
)
from .selectors import training_checkpoints_page, training_events_page, training_job_get, training_jobs_page
from .services import event_body, fine_tuning_job_create, training_job_cancel
from .views import TrainingView

NOT_FOUND = "not_found: no such job of yours"
AFTER_NOT_FOUND = "not_found (param after): no such object to list after"


class FineTuningJobListView(TrainingView):
    @operation(operation_id="fine_tuning_jobs_list", summary="Your fine-tuning jobs, newest first (OpenAI)",
               query=ListQuerySerializer, responses=list_of(FineTuningJobSerializer, "FineTuningJobPage"),
               errors={404: AFTER_NOT_FOUND})
    def get(self, request, query):
        jobs, has_more = training_jobs_page(user=request.user, after=query.get("after"),
                                            limit=query.get("limit", 20))
        return Response(page_body(FineTuningJobSerializer(jobs, many=True).data, has_more=has_more))

    @operation(operation_id="fine_tuning_jobs_create", summary="Create a fine-tuning job (OpenAI)",
               request=FineTuningJobCreateSerializer, responses={200: FineTuningJobSerializer},
               errors={404: "the training file or base model is not found", 413: None, 429: None})
    def post(self, request, data):
        job = fine_tuning_job_create(user=request.user, api_key=request.auth, data=data)
        return Response(FineTuningJobSerializer(job).data)  # OpenAI answers 200, not 201


class FineTuningJobDetailView(TrainingView):
    @operation(operation_id="fine_tuning_jobs_retrieve", summary="A fine-tuning job (OpenAI)",
               responses=FineTuningJobSerializer, errors={404: NOT_FOUND})
    def get(self, request, job_id):
        return Response(FineTuningJobSerializer(training_job_get(user=request.user, job_id=job_id)).data)


class FineTuningJobCancelView(TrainingView):
    @operation(operation_id="fine_tuning_jobs_cancel", summary="Cancel a fine-tuning job (OpenAI)",
               responses=FineTuningJobSerializer, errors={404: NOT_FOUND, 409: None})
    def post(self, request, job_id):
        return Response(FineTuningJobSerializer(training_job_cancel(user=request.user, job_id=job_id)).data)


class FineTuningJobEventsView(TrainingView):
    @operation(operation_id="fine_tuning_jobs_events", summary="A job's events, newest first (OpenAI)",
               query=ListQuerySerializer, responses=list_of(FineTuningEventSerializer, "FineTuningEventPage"),
               errors={404: f"{NOT_FOUND}, or {AFTER_NOT_FOUND}"})
    def get(self, request, job_id, query):
        job = training_job_get(user=request.user, job_id=job_id)
        page, has_more = training_events_page(job=job, after=query.get("after"), limit=query.get("limit", 20))
        return Response(page_body([event_body(event) for event in page], has_more=has_more))


class FineTuningJobCheckpointsView(TrainingView):
    @operation(operation_id="fine_tuning_jobs_checkpoints", summary="A job's checkpoints, newest first (OpenAI)",
               query=ListQuerySerializer,
               responses=list_of(FineTuningCheckpointSerializer, "FineTuningCheckpointPage"),
               errors={404: f"{NOT_FOUND}, or {AFTER_NOT_FOUND}"})
    def get(self, request, job_id, query):
        job = training_job_get(user=request.user, job_id=job_id)
        page, has_more = training_checkpoints_page(job=job, after=query.get("after"), limit=query.get("limit", 10))
        return Response(page_body(FineTuningCheckpointSerializer(page, many=True).data, has_more=has_more))
