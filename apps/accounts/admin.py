from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import Count, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from .models import ApiKey, Profile
from .services import api_key_create


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("display_prefix", "name", "user", "scopes", "created_at", "last_used_at", "expires_at",
                    "revoked_at")
    list_filter = ("revoked_at", "expires_at")
    search_fields = ("name", "user__username", "lookup")
    readonly_fields = ("display_prefix", "created_at", "last_used_at")
    fields = ("user", "name", "scopes", "expires_at", "display_prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke_keys"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        key, raw = api_key_create(user=obj.user, name=obj.name, scopes=obj.scopes, expires_at=obj.expires_at)
        obj.pk = key.pk
        obj.refresh_from_db()
        # The only time the key is visible: it is stored as a hash.
        messages.warning(request, f"New API key (copy it now, it will not be shown again): {raw}")

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).")


class ProfileInline(admin.StackedInline):
    model = Profile
    can_delete = False


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class UserWithProfileAdmin(UserAdmin):
    """Users with their settings, limits and usage (details: GET /api/v1/system/analytics)."""

    inlines = [ProfileInline]
    list_display = ("username", "is_staff", "is_active", "requests", "tokens", "last_login")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            request_count=Count("generations"),
            token_count=Coalesce(Sum("generations__prompt_tokens"), 0) + Coalesce(
                Sum("generations__completion_tokens"), 0))

    @admin.display(description="requests", ordering="request_count")
    def requests(self, obj):
        return obj.request_count

    @admin.display(description="tokens", ordering="token_count")
    def tokens(self, obj):
        return obj.token_count
