from django.contrib import admin

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
    list_display = ("id", "user", "model", "state", "finish_reason", "prompt_tokens", "completion_tokens",
                    "queue_wait_ms", "time_to_first_token_ms", "total_ms", "created_at")
    list_filter = ("state", "model", "finish_reason")
    search_fields = ("id", "user__username", "worker")
    readonly_fields = [f.name for f in GenerationRequest._meta.fields]
    date_hierarchy = "created_at"
