from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import Count, Sum
from django.db.models.functions import Coalesce
from django.utils.html import format_html

from apps.chat.models import GenerationRequest
from apps.core.admin_display import badge, short_time

from .models import ApiKey, Profile, Scope
from .services import api_key_create, api_keys_revoke, user_deactivate


class ApiKeyForm(forms.ModelForm):
    # Check boxes, not raw JSON: a scope can be picked once only (the model's clean() stores them in order).
    scopes = forms.TypedMultipleChoiceField(choices=Scope.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = ApiKey
        fields = "__all__"


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ("display_prefix", "name", "user", "shown_status", "shown_scopes", "validity", "last_used",
                    "created")
    list_filter = ("revoked_at", "expires_at")
    search_fields = ("name", "user__username", "lookup")
    list_select_related = ("user",)
    readonly_fields = ("display_prefix", "shown_status", "created_at", "last_used_at", "parent")
    fields = ("user", "name", "scopes", "expires_at", "display_prefix", "shown_status", "created_at", "last_used_at",
              "revoked_at", "parent")
    actions = ["revoke_keys"]

    @admin.display(description="status")
    def shown_status(self, obj):
        return badge(obj.status) if obj.pk else "—"

    @admin.display(description="scopes")
    def shown_scopes(self, obj):
        return ", ".join(obj.scopes)

    @admin.display(description="revoked / expires", ordering="expires_at")
    def validity(self, obj):
        if obj.revoked_at is not None:
            return format_html("revoked {}", short_time(obj.revoked_at))
        if obj.expires_at is not None:
            return format_html("{} {}", "expired" if obj.status == "expired" else "expires", short_time(obj.expires_at))
        return "never expires"

    @admin.display(description="last used", ordering="last_used_at")
    def last_used(self, obj):
        return short_time(obj.last_used_at)

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return short_time(obj.created_at)

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            if obj.revoked_at is not None and "revoked_at" in form.changed_data:
                api_keys_revoke(keys=ApiKey.objects.filter(pk=obj.pk))  # stops its running requests
            return
        key, raw = api_key_create(user=obj.user, name=obj.name, scopes=obj.scopes, expires_at=obj.expires_at)
        obj.pk = key.pk
        obj.refresh_from_db()
        # The only time the key is visible: it is stored as a hash.
        messages.warning(request, f"New API key (copy it now, it will not be shown again): {raw}")

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request, queryset):
        keys = list(queryset)
        count = api_keys_revoke(keys=queryset)
        for key in keys:
            if key.revoked_at is None:  # the admin history names who revoked which key
                self.log_change(request, key, "Revoked from the admin (with its minted keys and running work).")
        self.message_user(request, f"Revoked {count} key(s); their queued and running requests were cancelled.")


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
    actions = ["deactivate_users"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and not obj.is_active and "is_active" in form.changed_data:
            user_deactivate(user=obj)  # their keys stop at once, and so do their running requests

    @admin.action(description="Deactivate selected users (their keys stop, their requests are cancelled)")
    def deactivate_users(self, request, queryset):
        for user in queryset:
            user_deactivate(user=user)
        self.message_user(request, f"Deactivated {len(queryset)} user(s).")

    def get_changelist_instance(self, request):
        """Usage of the page's users only, in one grouped query: annotating the queryset made the paginator's
        count and the page each aggregate the whole requests table (seconds at 100,000 requests)."""
        changelist = super().get_changelist_instance(request)
        users = list(changelist.result_list)
        tokens = Coalesce(Sum("prompt_tokens"), 0) + Coalesce(Sum("completion_tokens"), 0)
        usage = {row["user"]: row for row in GenerationRequest.objects.filter(user__in=users).order_by()
                 .values("user").annotate(requests=Count("id"), tokens=tokens)}
        for user in users:
            row = usage.get(user.pk, {})
            user.request_count, user.token_count = row.get("requests", 0), row.get("tokens", 0)
        changelist.result_list = users
        return changelist

    @admin.display(description="requests")
    def requests(self, obj):
        return obj.request_count

    @admin.display(description="tokens")
    def tokens(self, obj):
        return obj.token_count
