"""Training in the admin: uploaded files, jobs with their progress, and a job page with its loss curve.

Rows are made by the API and the workers; the admin reads them and acts only
through the training services (cancel, retry), each action recorded in the
admin history. The job page polls `<job>/metrics/` (staff only) while the job
is live and redraws its curve with Chart.js (vendored, no CDN).
"""
from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from apps.core.admin_display import (
    badge,
    compact_id,
    human_bytes,
    human_duration,
    progress_bar,
    short_time,
    shortened,
)
from apps.core.errors import AppError

from .models import TrainingFile, TrainingJob
from .selectors import training_job_metric_points
from .services import event_body, training_file_delete, training_job_cancel, training_job_retry

EVENTS_SHOWN = 200  # the newest events on the job page; the API pages through all of them


@admin.register(TrainingFile)
class TrainingFileAdmin(admin.ModelAdmin):
    list_display = ("short_id", "filename", "user", "shown_status", "format", "examples", "size", "first_error",
                    "created")
    list_filter = ("status", "format")
    search_fields = ("filename", "user__username")
    list_select_related = ("user",)
    fields = ("public_id", "filename", "user", "purpose", "shown_status", "format", "examples", "size",
              "error_lines", "validation_attempts", "created_at", "path")
    readonly_fields = fields

    def has_add_permission(self, request):
        return False  # files are uploaded through the API (POST /files)

    def has_change_permission(self, request, obj=None):
        return False

    # Deleting goes the way the API deletes: the stored file goes too.
    def delete_model(self, request, obj):
        training_file_delete(user=obj.user, file_id=obj.id)

    def delete_queryset(self, request, queryset):
        for record in queryset.select_related("user"):
            training_file_delete(user=record.user, file_id=record.id)

    @admin.display(description="id")
    def short_id(self, obj):
        return compact_id(obj.id, prefix="file-")

    @admin.display(description="status", ordering="status")
    def shown_status(self, obj):
        return badge(obj.status)

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return short_time(obj.created_at)

    @admin.display(description="size", ordering="bytes")
    def size(self, obj):
        return human_bytes(obj.bytes)

    @admin.display(description="first error")
    def first_error(self, obj):
        if not obj.errors:
            return "—"
        first = obj.errors[0]
        text = f"line {first['line']}: {first['message']}" if first.get("line") else first.get("message", "")
        return shortened(text)

    @admin.display(description="errors")
    def error_lines(self, obj):
        if not obj.errors:
            return "—"
        return format_html("<ul>{}</ul>", format_html_join(
            "", "<li>line {}: {}</li>", ((e.get("line", "?"), e.get("message", "")) for e in obj.errors)))


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    change_form_template = "admin/training/trainingjob/change_form.html"
    list_display = ("short_id", "user", "base_model", "training_type", "shown_status", "progress", "eta", "loss",
                    "worker", "created")
    list_filter = ("status", "training_type", "base_model")
    search_fields = ("id", "user__username", "base_model", "fine_tuned_model", "name")
    list_select_related = ("user",)
    fields = ("public_id", "user", "name", "base_model", "training_type", "shown_status", "status_reason",
              "progress", "eta", "epoch", "loss", "learning_rate", "tokens_per_second", "trained_tokens",
              "fine_tuned_model", "training_file", "validation_file", "dataset_path", "hyperparameters", "suffix",
              "attempts", "worker", "created_at", "started_at", "finished_at")
    readonly_fields = fields
    actions = ["cancel_jobs", "retry_jobs"]

    def has_add_permission(self, request):
        return False  # jobs are created through the API

    def has_change_permission(self, request, obj=None):
        return False  # the page is read-only; cancel and retry are its actions

    def has_delete_permission(self, request, obj=None):
        return False  # the API's DELETE removes a job with its model and checkpoints; the admin does not

    # Cancel and retry are allowed to whoever may view jobs in the admin (staff with the view permission).
    def has_cancel_permission(self, request):
        return self.has_view_permission(request)

    has_retry_permission = has_cancel_permission

    @admin.display(description="id")
    def short_id(self, obj):
        return compact_id(obj.id, prefix="ftjob-")

    @admin.display(description="status", ordering="status")
    def shown_status(self, obj):
        return badge(obj.status, title=obj.status_reason)

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return short_time(obj.created_at)

    @admin.display(description="progress")
    def progress(self, obj):
        return progress_bar(obj.step, obj.total_steps)

    @admin.display(description="ETA", ordering="eta_seconds")
    def eta(self, obj):
        return human_duration(obj.eta_seconds) if obj.status == TrainingJob.Status.RUNNING else "—"

    # Cancel and retry: through the training services, each recorded in the admin history.
    def _cancel(self, request, job: TrainingJob) -> None:
        if job.is_finished:
            self.message_user(request, f"{job.public_id} is already {job.status}.", level=messages.WARNING)
            return
        job = training_job_cancel(user=job.user, job_id=job.id)
        self.log_change(request, job, "Cancelled from the admin.")
        self.message_user(request, f"{job.public_id}: cancel requested (now {job.status}).")

    def _retry(self, request, job: TrainingJob) -> TrainingJob | None:
        try:
            retry = training_job_retry(job=job)
        except AppError as error:
            self.message_user(request, error.message, level=messages.ERROR)
            return None
        self.log_change(request, job, f"Retried from the admin as {retry.public_id}.")
        self.log_addition(request, retry, f"Retry of {job.public_id}.")
        self.message_user(request, f"{job.public_id} retried as {retry.public_id}.")
        return retry

    @admin.action(description="Cancel selected jobs", permissions=["cancel"])
    def cancel_jobs(self, request, queryset):
        for job in queryset.select_related("user"):
            self._cancel(request, job)

    @admin.action(description="Retry selected jobs (a new job with the same data and settings)",
                  permissions=["retry"])
    def retry_jobs(self, request, queryset):
        for job in queryset:
            self._retry(request, job)

    # The job page: its buttons post here, and its curve polls the metrics endpoint.
    def get_urls(self):
        own = [
            path("<uuid:job_id>/metrics/", self.admin_site.admin_view(self.metrics_view),
                 name="training_trainingjob_metrics"),
            path("<uuid:job_id>/cancel/", self.admin_site.admin_view(self.cancel_view),
                 name="training_trainingjob_cancel"),
            path("<uuid:job_id>/retry/", self.admin_site.admin_view(self.retry_view),
                 name="training_trainingjob_retry"),
        ]
        return own + super().get_urls()

    def _job_or_404(self, request, job_id) -> TrainingJob:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return get_object_or_404(TrainingJob.objects.select_related("user"), id=job_id)

    def metrics_view(self, request, job_id):
        """{status, progress, points after `after_step`, events after `after_event`}: what the page redraws."""
        job = self._job_or_404(request, job_id)
        after_step = _int(request.GET.get("after_step"))
        after_event = _int(request.GET.get("after_event"))
        events = job.events.filter(id__gt=after_event).order_by("id")[:EVENTS_SHOWN]
        return JsonResponse({
            "id": job.public_id, "status": job.status, "finished": job.is_finished, "step": job.step,
            "total_steps": job.total_steps, "eta_seconds": job.eta_seconds, "loss": job.loss,
            "points": training_job_metric_points(job=job, after_step=after_step),
            "events": [{**event_body(event), "seq": event.id} for event in events],
            "error": job.error,
        })

    def _post_action(self, request, job_id, act):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        job = self._job_or_404(request, job_id)
        result = act(request, job)
        target = result if isinstance(result, TrainingJob) else job
        return HttpResponseRedirect(reverse("admin:training_trainingjob_change", args=[target.pk]))

    def cancel_view(self, request, job_id):
        return self._post_action(request, job_id, self._cancel)

    def retry_view(self, request, job_id):
        return self._post_action(request, job_id, self._retry)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, object_id)
        extra = {}
        if job is not None:
            events = list(job.events.order_by("-id")[:EVENTS_SHOWN])[::-1]
            extra = {
                "job": job,
                "points": training_job_metric_points(job=job),
                "events": events,
                "last_event_id": events[-1].id if events else 0,
                "checkpoints": job.checkpoints.all(),
                "metrics_url": reverse("admin:training_trainingjob_metrics", args=[job.pk]),
                "cancel_url": reverse("admin:training_trainingjob_cancel", args=[job.pk]),
                "retry_url": reverse("admin:training_trainingjob_retry", args=[job.pk]),
                "can_retry": job.status in (TrainingJob.Status.FAILED, TrainingJob.Status.CANCELLED),
            }
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})


def _int(raw) -> int:
    return int(raw) if raw and raw.isdigit() else 0
