from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from apps.accounts.models import Scope
from apps.core.endpoints import Endpoint, list_of, operation
from apps.core.parsers import BoundedJSONParser

from .selectors import training_file_get, training_job_get
from .serializers import CheckpointSerializer, FileSerializer, JobCreateSerializer, JobSerializer
from .services import (
    FILE_PURPOSES,
    event_body,
    training_file_create,
    training_file_delete,
    training_job_cancel,
    training_job_create,
    training_job_delete,
)


class TrainingView(Endpoint):
    required_scope = Scope.TRAINING


def _list(items) -> dict:
    return {"object": "list", "data": items, "has_more": False}


class FileUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A JSONL dataset (docs/training.md), a document for vector stores: "
                                           ".txt, .md, .json, .jsonl, .pdf (docs/vector_stores.md), or an image or "
                                           "video for chat (purpose vision, docs/multimodal.md).")
    purpose = serializers.ChoiceField(choices=list(FILE_PURPOSES))


class JobEventSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(help_text="fine_tuning.job.event")
    created_at = serializers.IntegerField()
    level = serializers.CharField()
    message = serializers.CharField()


class FileListView(TrainingView):
    parser_classes = [MultiPartParser, BoundedJSONParser]

    @operation(operation_id="files_list", summary="Your uploaded files", responses=list_of(FileSerializer, "FileList"))
    def get(self, request):
        return Response(_list(FileSerializer(request.user.training_files.all(), many=True).data))

    @operation(summary="Upload a file (multipart: file, purpose): a JSONL dataset (fine-tune), validated in the "
                       "background, a document for vector stores (assistants, user_data), or an image or video "
                       "for chat (vision)",
               request=FileUploadSerializer, media_type="multipart/form-data", responses={201: FileSerializer},
               errors={413: "file_too_large or storage_quota_exceeded (docs/limits.md)"})
    def post(self, request, data):
        record = training_file_create(user=request.user, upload=data["file"], purpose=data["purpose"])
        return Response(FileSerializer(record).data, status=201)


class FileDetailView(TrainingView):
    @operation(summary="A file and its validation result", responses=FileSerializer)
    def get(self, request, file_id):
        return Response(FileSerializer(training_file_get(user=request.user, file_id=file_id)).data)

    @operation(summary="Delete a file", responses={200: inline_serializer("FileDeleted", {
        "id": serializers.CharField(), "object": serializers.CharField(), "deleted": serializers.BooleanField()})})
    def delete(self, request, file_id):
        record = training_file_get(user=request.user, file_id=file_id)
        training_file_delete(user=request.user, file_id=file_id)
        return Response({"id": record.public_id, "object": "file", "deleted": True})


class JobListView(TrainingView):
    @operation(operation_id="training_jobs_list", summary="Your fine-tuning jobs",
               responses=list_of(JobSerializer, "TrainingJobList"))
    def get(self, request):
        return Response(_list(JobSerializer(request.user.training_jobs.all(), many=True).data))

    @operation(summary="Create a LoRA or QLoRA fine-tuning job", request=JobCreateSerializer,
               responses={201: JobSerializer},
               errors={404: "the base model or a file is not found", 429: "too many of your jobs wait or run"})
    def post(self, request, data):
        job = training_job_create(user=request.user, api_key=request.auth, data=data)
        return Response(JobSerializer(job).data, status=201)


class JobDetailView(TrainingView):
    @operation(summary="A fine-tuning job", responses=JobSerializer)
    def get(self, request, job_id):
        return Response(JobSerializer(training_job_get(user=request.user, job_id=job_id)).data)

    @operation(summary="Cancel a live job, or delete a finished one", responses={200: JobSerializer, 204: None})
    def delete(self, request, job_id):
        job = training_job_delete(user=request.user, job_id=job_id)
        return Response(JobSerializer(job).data) if job else Response(status=204)


class JobStatusView(TrainingView):
    @operation(summary="Status and progress of a job", responses=inline_serializer("TrainingJobStatus", {
        "id": serializers.CharField(), "status": serializers.CharField(),
        "status_reason": serializers.CharField(allow_null=True), "progress": serializers.JSONField(allow_null=True),
        "error": serializers.JSONField(allow_null=True), "fine_tuned_model": serializers.CharField(allow_null=True),
        "trained_tokens": serializers.IntegerField(allow_null=True)}))
    def get(self, request, job_id):
        job = JobSerializer(training_job_get(user=request.user, job_id=job_id)).data
        return Response({key: job[key] for key in ("id", "status", "status_reason", "progress", "error",
                                                   "fine_tuned_model", "trained_tokens")})


class JobCancelView(TrainingView):
    @operation(summary="Cancel a job", responses=JobSerializer)
    def post(self, request, job_id):
        return Response(JobSerializer(training_job_cancel(user=request.user, job_id=job_id)).data)


class JobEventsView(TrainingView):
    @operation(summary="Events of a job (OpenAI's fine_tuning.job.event), oldest first",
               responses=list_of(JobEventSerializer, "TrainingJobEventList"))
    def get(self, request, job_id):
        job = training_job_get(user=request.user, job_id=job_id)
        return Response(_list([event_body(event) for event in job.events.all()]))


class JobCheckpointsView(TrainingView):
    @operation(summary="Checkpoints of a job, newest first",
               responses=list_of(CheckpointSerializer, "TrainingCheckpointList"))
    def get(self, request, job_id):
        job = training_job_get(user=request.user, job_id=job_id)
        return Response(_list(CheckpointSerializer(job.checkpoints.all(), many=True).data))
