from asgiref.sync import async_to_sync
from django.contrib import admin, messages

from apps.core.errors import AppError

from .load_unload import model_command
from .models import ModelEntry
from .services import model_remove
from .worker_registry import live_workers


@admin.register(ModelEntry)
class ModelEntryAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "owner", "shown_visibility", "quantization", "context_length", "parameter_count",
                    "size_bytes", "live_state", "enabled")
    list_filter = ("kind", "visibility", "source", "quantization", "enabled")
    search_fields = ("id", "source_ref", "path", "owner__username")
    list_select_related = ("owner",)
    raw_id_fields = ("owner",)
    filter_horizontal = ("shared_with",)
    actions = ["load_models", "unload_models"]

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

    def _run(self, request, queryset, action: str):
        for entry in queryset:
            try:
                result = async_to_sync(model_command)(action, entry)
                where = ", ".join(result["workers"])
                self.message_user(request, {
                    "loaded": f"Loaded {entry.id} on {where}.",
                    "unloaded": f"Unloaded {entry.id} from {where}.",
                    "not_loaded": f"Model {entry.id} was not loaded anywhere.",
                }[result["status"]])
            except AppError as error:
                self.message_user(request, f"{entry.id}: {error.message}", level=messages.ERROR)

    @admin.action(description="Load on the best worker")
    def load_models(self, request, queryset):
        self._run(request, queryset, "load")

    @admin.action(description="Unload everywhere")
    def unload_models(self, request, queryset):
        self._run(request, queryset, "unload")
