from django.contrib import admin
from django.utils.html import format_html

from apps.core.admin_display import badge, compact_id, short_time

from .models import Conversation, GenerationRequest, Message


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("role", "content", "created_at")
    readonly_fields = ("created_at",)
    extra = 0


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "user", "model", "updated_at")
    search_fields = ("title", "user__username")
    list_filter = ("model",)
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "conversation", "role", "short_content", "created_at")
    list_filter = ("role",)
    search_fields = ("content",)

    @admin.display(description="content")
    def short_content(self, obj):
        return obj.content[:80]


class CatalogModelFilter(admin.SimpleListFilter):
    """Filter by model, listing the catalog's models: Django's default lists the log's distinct values, a scan of
    the whole request log on every page (bench/console.py)."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request, model_admin):
        from apps.catalog.models import ModelEntry

        return [(model_id, model_id) for model_id in ModelEntry.objects.order_by("id").values_list("id", flat=True)]

    def queryset(self, request, queryset):
        return queryset.filter(model=self.value()) if self.value() else queryset


class FinishReasonFilter(admin.SimpleListFilter):
    """The finish reasons the hub writes, named here for the same reason as the models above."""

    title = "finish reason"
    parameter_name = "finish_reason"

    def lookups(self, request, model_admin):
        return [(reason, reason) for reason in ("stop", "length", "tool_calls", "cancelled")]

    def queryset(self, request, queryset):
        return queryset.filter(finish_reason=self.value()) if self.value() else queryset


@admin.register(GenerationRequest)
class GenerationRequestAdmin(admin.ModelAdmin):
    """The request log: read-only (the workers write it), compact enough to scan at 1400 px."""

    list_display = ("short_id", "created", "shown_state", "error_code", "model", "worker", "user", "finish_reason",
                    "prompt_tokens", "completion_tokens", "time_to_first_token_ms", "total_ms")
    list_filter = ("state", CatalogModelFilter, FinishReasonFilter, "cache_hit")
    search_fields = ("id", "user__username", "worker")
    list_select_related = ("user",)
    list_per_page = 50
    show_full_result_count = False  # a second COUNT(*) over the whole log on every filtered page is not worth it
    # No date_hierarchy: its list of days is a DISTINCT over the whole log (~330 ms at 100,000 rows); the list is
    # newest first and the dashboard covers the last hour.
    readonly_fields = [f.name for f in GenerationRequest._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # viewing stays allowed; Django then renders the page without Save and refuses a POST

    def has_delete_permission(self, request, obj=None):
        return False  # usage records: deleting a conversation scrubs their text and keeps them

    @admin.display(description="id")
    def short_id(self, obj):
        return compact_id(obj.id, prefix="chatcmpl-")

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return short_time(obj.created_at)

    @admin.display(description="state", ordering="state")
    def shown_state(self, obj):
        return badge(obj.state)

    @admin.display(description="error")
    def error_code(self, obj):
        if not obj.error:
            return "—"
        return format_html('<span title="{}">{}</span>', obj.error.get("message", ""), obj.error.get("code") or
                           obj.error.get("type") or "error")
