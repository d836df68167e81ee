"""Admin: stores with their embedding model, file progress and chunk counts; files with status and errors.

"Re-embed" (a store action) embeds every file of the selected stores again with the hub's current
default embedding model, in the background; its progress is the Files column (completed of total).
"""
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count, Q

from .models import VectorStore, VectorStoreFile
from .services import vector_store_reembed


class VectorStoreFileInline(admin.TabularInline):
    model = VectorStoreFile
    fields = ("file", "status", "last_error", "chunk_count", "usage_bytes", "attempts", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(VectorStore)
class VectorStoreAdmin(admin.ModelAdmin):
    list_display = ("public_id", "name", "owner", "embedding_model", "dimensions", "progress", "chunks",
                    "created_at")
    list_filter = ("embedding_model",)
    search_fields = ("name", "owner__username", "id")
    readonly_fields = ("id", "owner", "embedding_model", "dimensions", "created_at", "last_active_at")
    inlines = [VectorStoreFileInline]
    actions = ["reembed"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("owner").annotate(
            file_total=Count("files", distinct=True),
            file_done=Count("files", filter=Q(files__status=VectorStoreFile.Status.COMPLETED), distinct=True),
            file_failed=Count("files", filter=Q(files__status=VectorStoreFile.Status.FAILED), distinct=True))

    @admin.display(description="files (completed / total, failed)")
    def progress(self, store):
        failed = f", {store.file_failed} failed" if store.file_failed else ""
        return f"{store.file_done} / {store.file_total}{failed}"

    @admin.display(description="chunks")
    def chunks(self, store):
        return store.files.aggregate(total=Count("chunks"))["total"]

    @admin.action(description="Re-embed with the default embedding model (background; progress in Files)")
    def reembed(self, request, queryset):
        model_id = settings.AIHUB_DEFAULT_EMBEDDING_MODEL
        total = sum(vector_store_reembed(store=store, model_id=model_id) for store in queryset)
        self.message_user(request, f"{total} file(s) of {queryset.count()} store(s) queued for embedding with "
                                   f"{model_id}.", messages.SUCCESS)


@admin.register(VectorStoreFile)
class VectorStoreFileAdmin(admin.ModelAdmin):
    list_display = ("file", "store", "status", "error_message", "chunk_count", "usage_bytes", "attempts",
                    "created_at")
    list_filter = ("status",)
    search_fields = ("file__filename", "store__name", "store__owner__username")
    readonly_fields = ("store", "file", "batch", "status", "last_error", "chunk_count", "usage_bytes", "generation",
                       "attempts", "chunking_strategy", "created_at")

    @admin.display(description="last error")
    def error_message(self, entry):
        return (entry.last_error or {}).get("message", "")
