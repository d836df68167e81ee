from asgiref.sync import async_to_sync
from django.contrib import admin, messages

from apps.core.admin_display import human_bytes
from apps.core.errors import AppError
from apps.monitoring.analytics import model_figures

from .load_unload import model_command
from .models import ModelEntry
from .services import model_remove
from .worker_registry import live_workers


@admin.register(ModelEntry)
class ModelEntryAdmin(admin.ModelAdmin):
    change_form_template = "admin/catalog/modelentry/change_form.html"
    # What an operator looks for first, on the left: it all fits 1400 px without scrolling sideways.
    list_display = ("id", "kind", "live_state", "enabled", "size", "parameters", "quantization", "context_length",
                    "owner", "shown_visibility")
    list_filter = ("kind", "visibility", "source", "quantization", "enabled")
    search_fields = ("id", "source_ref", "path", "owner__username")
    list_select_related = ("owner",)
    raw_id_fields = ("owner",)
    filter_horizontal = ("shared_with",)
    actions = ["load_models", "unload_models"]

    def get_readonly_fields(self, request, obj=None):
        # The id is the primary key: "renaming" it would save a copy under the new id and keep the old row.
        return ("id", *super().get_readonly_fields(request, obj)) if obj is not None else \
            super().get_readonly_fields(request, obj)

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj):
        return human_bytes(obj.size_bytes)

    @admin.display(description="parameters", ordering="parameter_count")
    def parameters(self, obj):
        return _human_count(obj.parameter_count)

    @admin.display(description="visibility", ordering="visibility")
    def shown_visibility(self, obj):
        return obj.effective_visibility  # an operator model (no owner) is public whatever the field says

    # A fine-tune deleted here goes the way the API deletes it: off the workers and off the disk too.
    def delete_model(self, request, obj):
        if not (obj.adapter_path and model_remove(model_id=obj.id)):
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for model_id in queryset.exclude(adapter_path="").values_list("id", flat=True):
            model_remove(model_id=model_id)
        queryset.filter(adapter_path="").delete()

    def changelist_view(self, request, extra_context=None):
        # One heartbeat read per page, not one per row.
        self._workers = live_workers()
        return super().changelist_view(request, extra_context)

    @admin.display(description="loaded on")
    def live_state(self, obj):
        holders = [w.hostname for w in getattr(self, "_workers", []) if obj.id in w.loaded]
        return ", ".join(holders) or "—"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        entry = self.get_object(request, object_id)
        extra = {}
        if entry is not None:
            holders = [w for w in live_workers() if entry.id in w.loaded]
            extra = {"figures": model_figures(model_id=entry.id),
                     "loaded_on": [(w.hostname, w.device, w.loaded[entry.id]) for w in holders]}
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    def _run(self, request, queryset, action: str):
        for entry in queryset:
            try:
                result = async_to_sync(model_command)(action, entry)
            except AppError as error:
                self.message_user(request, f"{entry.id}: {error.message}", level=messages.ERROR)
                continue
            where = ", ".join(result["workers"])
            message = {
                "loaded": f"Loaded {entry.id} on {where}.",
                "unloaded": f"Unloaded {entry.id} from {where}.",
                "not_loaded": f"Model {entry.id} was not loaded anywhere.",
            }[result["status"]]
            if result["status"] != "not_loaded":
                self.log_change(request, entry, message)  # the admin history shows who moved which model
            self.message_user(request, message)

    @admin.action(description="Load on the best worker")
    def load_models(self, request, queryset):
        self._run(request, queryset, "load")

    @admin.action(description="Unload everywhere")
    def unload_models(self, request, queryset):
        self._run(request, queryset, "unload")


def _human_count(count: int) -> str:
    """135M, 1.7B: parameter counts as model cards write them."""
    if not count:
        return "—"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return str(count)
