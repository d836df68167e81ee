from django.contrib import admin

from .models import ModelEntry


@admin.register(ModelEntry)
class ModelEntryAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "source", "context_length", "size_bytes", "enabled", "created_at")
    list_filter = ("kind", "source", "enabled")
    search_fields = ("id", "source_ref", "path")
