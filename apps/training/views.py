from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import Scope
from apps.core.errors import AppError
from apps.core.parsers import BoundedJSONParser

from .selectors import training_file_get, training_job_get
from .serializers import CheckpointSerializer, FileSerializer, JobCreateSerializer, JobSerializer
from .services import (
    event_body,
    training_file_create,
    training_file_delete,
    training_job_cancel,
    training_job_create,
    training_job_delete,
)


class TrainingView(APIView):
    required_scope = Scope.TRAINING


def _list(items) -> dict:
    return {"object": "list", "data": items, "has_more": False}


class FileListView(TrainingView):
    parser_classes = [MultiPartParser, BoundedJSONParser]

    @extend_schema(operation_id="files_list", summary="Your uploaded files", responses=FileSerializer(many=True))
    def get(self, request):
        return Response(_list(FileSerializer(request.user.training_files.all(), many=True).data))

    @extend_schema(summary="Upload a JSONL dataset (multipart: file, purpose=fine-tune); validated in the background",
                   request={"multipart/form-data": inline_serializer("FileUpload", {
                       "file": serializers.FileField(), "purpose": serializers.CharField()})},
                   responses={201: FileSerializer})
    def post(self, request):
        upload = request.FILES.get("file")
        if upload is None:
            raise AppError("Send the dataset as the multipart field 'file'.", param="file", code="invalid_value")
        record = training_file_create(user=request.user, upload=upload, purpose=request.data.get("purpose", ""))
        return Response(FileSerializer(record).data, status=201)


class FileDetailView(TrainingView):
    @extend_schema(summary="A file and its validation result", responses=FileSerializer)
    def get(self, request, file_id):
        return Response(FileSerializer(training_file_get(user=request.user, file_id=file_id)).data)

    @extend_schema(summary="Delete a file", responses={200: None})
    def delete(self, request, file_id):
        record = training_file_get(user=request.user, file_id=file_id)
        training_file_delete(user=request.user, file_id=file_id)
        return Response({"id": record.public_id, "object": "file", "deleted": True})


class JobListView(TrainingView):
    @extend_schema(operation_id="training_jobs_list", summary="Your fine-tuning jobs",
                   responses=JobSerializer(many=True))
    def get(self, request):
        return Response(_list(JobSerializer(request.user.training_jobs.all(), many=True).data))

    @extend_schema(summary="Create a LoRA or QLoRA fine-tuning job", request=JobCreateSerializer,
                   responses={201: JobSerializer})
    def post(self, request):
        serializer = JobCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        job = training_job_create(user=request.user, api_key=request.auth, data=serializer.validated_data)
        return Response(JobSerializer(job).data, status=201)


class JobDetailView(TrainingView):
    @extend_schema(summary="A fine-tuning job", responses=JobSerializer)
    def get(self, request, job_id):
        return Response(JobSerializer(training_job_get(user=request.user, job_id=job_id)).data)

    @extend_schema(summary="Cancel a live job, or delete a finished one", responses={200: JobSerializer, 204: None})
    def delete(self, request, job_id):
        job = training_job_delete(user=request.user, job_id=job_id)
        return Response(JobSerializer(job).data) if job else Response(status=204)


class JobStatusView(TrainingView):
    @extend_schema(summary="Status and progress of a job", responses=JobSerializer)
    def get(self, request, job_id):
        job = JobSerializer(training_job_get(user=request.user, job_id=job_id)).data
        return Response({key: job[key] for key in ("id", "status", "status_reason", "progress", "error",
                                                   "fine_tuned_model", "trained_tokens")})


class JobCancelView(TrainingView):
    @extend_schema(summary="Cancel a job", request=None, responses=JobSerializer)
    def post(self, request, job_id):
        return Response(JobSerializer(training_job_cancel(user=request.user, job_id=job_id)).data)


class JobEventsView(TrainingView):
    @extend_schema(summary="Events of a job (OpenAI's fine_tuning.job.event), oldest first",
                   responses=inline_serializer("JobEvents", {"object": serializers.CharField(),
                                                             "data": serializers.ListField()}))
    def get(self, request, job_id):
        job = training_job_get(user=request.user, job_id=job_id)
        return Response(_list([event_body(event) for event in job.events.all()]))


class JobCheckpointsView(TrainingView):
    @extend_schema(summary="Checkpoints of a job, newest first", responses=CheckpointSerializer(many=True))
    def get(self, request, job_id):
        job = training_job_get(user=request.user, job_id=job_id)
        return Response(_list(CheckpointSerializer(job.checkpoints.all(), many=True).data))
