"""The admin site, whose index is the operations dashboard (docs/operations.md: the dashboard).

Three views beside Django's own, all behind `admin_view` (an active staff
user, CSRF on POST):
- the index: the dashboard (apps/monitoring/dashboard.py) above the usual app list;
- `dashboard/state`: the dashboard's live part as JSON (rendered HTML and chart
  data), polled by static/aihub/dashboard.js; rendering it here keeps one
  template for both, with no front-end build;
- `dashboard/models/load` and `dashboard/models/unload` (POST): the same
  command the API and the model admin send (apps/catalog/load_unload.py),
  recorded in the admin history of the model, then back to the dashboard.
"""
from __future__ import annotations

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.urls import path, reverse

from apps.catalog.load_unload import model_command
from apps.catalog.models import ModelEntry
from apps.core.errors import AppError

from .dashboard import dashboard_read

LIVE_TEMPLATE = "aihub/dashboard_live.html"
POLL_SECONDS = 5


class AIHubAdminSite(admin.AdminSite):
    site_header = "AI Hub administration"
    site_title = "AI Hub admin"
    index_title = "Operations"
    index_template = "aihub/dashboard.html"
    # "View site" leads to the API's documentation: the hub has no other site to show.
    site_url = "/docs"
    # No app list down the left of every page: at 1400 px its 300 px are better spent on the lists' columns
    # (the index and the breadcrumbs lead everywhere it did).
    enable_nav_sidebar = False

    def get_urls(self):
        return [
            path("dashboard/state", self.admin_view(self.dashboard_state), name="dashboard-state"),
            path("dashboard/models/<str:action>", self.admin_view(self.dashboard_model_command),
                 name="dashboard-model-command"),
            *super().get_urls(),
        ]

    def _live_context(self, request) -> dict:
        return {"dashboard": dashboard_read(), "may_load": self._model_admin().has_change_permission(request)}

    def index(self, request, extra_context=None):
        context = self._live_context(request)
        return super().index(request, {
            **context, "poll_seconds": POLL_SECONDS, "charts": _charts(context["dashboard"]),
            "dashboard_config": {"state_url": reverse("admin:dashboard-state", current_app=self.name),
                                 "poll_seconds": POLL_SECONDS},
            **(extra_context or {})})

    def dashboard_state(self, request):
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        context = self._live_context(request)
        return JsonResponse({
            "html": render_to_string(LIVE_TEMPLATE, context, request=request),
            "charts": _charts(context["dashboard"]),
            "generated_at": context["dashboard"]["generated_at"].isoformat(),
        })

    def dashboard_model_command(self, request, action: str):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        model_admin = self._model_admin()
        if action not in ("load", "unload") or not model_admin.has_change_permission(request):
            raise PermissionDenied
        entry = ModelEntry.objects.filter(pk=request.POST.get("model_id", "")).first()
        if entry is None:
            messages.error(request, f"No model {request.POST.get('model_id', '')!r} in the catalog.")
            return redirect("admin:index")
        try:
            result = async_to_sync(model_command)(action, entry, worker_name=request.POST.get("worker") or None)
        except AppError as error:
            messages.error(request, f"{entry.id}: {error.message}")
            return redirect("admin:index")
        where = ", ".join(result["workers"])
        text = {"loaded": f"Loaded {entry.id} on {where}.", "unloaded": f"Unloaded {entry.id} from {where}.",
                "not_loaded": f"Model {entry.id} was not loaded anywhere."}[result["status"]]
        if result["status"] != "not_loaded":
            model_admin.log_change(request, entry, f"{text} (from the dashboard)")
        messages.success(request, text)
        return redirect("admin:index")

    def _model_admin(self):
        return self._registry[ModelEntry]


def _charts(dashboard: dict) -> dict:
    """What static/aihub/dashboard.js draws: requests per minute per model, and TTFT percentiles per model."""
    return {"requests_per_minute": dashboard["requests_per_minute"],
            "ttft": {"models": [m["model"] for m in dashboard["models"]],
                     "p50_ms": [m["ttft_p50_ms"] for m in dashboard["models"]],
                     "p95_ms": [m["ttft_p95_ms"] for m in dashboard["models"]]}}
