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


@admin.register(GenerationRequest)
class GenerationRequestAdmin(admin.ModelAdmin):
    """The request log: read-only (the workers write it), compact enough to scan at 1400 px."""

    list_display = ("short_id", "created", "shown_state", "error_code", "model", "worker", "user", "finish_reason",
                    "prompt_tokens", "completion_tokens", "time_to_first_token_ms", "total_ms")
    list_filter = ("state", "model", "finish_reason", "cache_hit")
    search_fields = ("id", "user__username", "worker")
    list_select_related = ("user",)
    list_per_page = 50
    show_full_result_count = False  # a second COUNT(*) over the whole log on every filtered page is not worth it
    date_hierarchy = "created_at"
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
