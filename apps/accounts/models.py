from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

KEY_PREFIX = "ahk"  # readable: a leaked string is recognisable as an AI Hub key


class Scope(models.TextChoices):
    INFERENCE = "inference", "inference (chat, models, conversations)"
    TRAINING = "training", "training (files, fine-tuning jobs)"
    ADMIN = "admin", "admin (load/unload, status; staff users only)"


DEFAULT_SCOPES = [Scope.INFERENCE.value, Scope.TRAINING.value]


def default_scopes() -> list[str]:
    return list(DEFAULT_SCOPES)


def normalized_scopes(scopes) -> list[str]:
    """Each scope once, in the order Scope lists them: how every key stores its scopes.

    A client or operator listing a scope twice ("inference", "inference") gets the one power it named.
    """
    wanted = set(scopes)
    return [scope for scope in Scope.values if scope in wanted] + sorted(wanted - set(Scope.values))


def hash_key(raw_key: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is enough; a slow KDF
    # would only add latency to every request.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class LimitFields(models.Model):
    """Per-user defaults (Profile) and per-key overrides (ApiKey); empty means "inherit", 0 means unlimited."""

    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent_generations = models.PositiveIntegerField(null=True, blank=True)
    token_budget = models.PositiveBigIntegerField(null=True, blank=True, help_text="Tokens per budget period.")
    budget_period_days = models.PositiveIntegerField(null=True, blank=True)
    max_queued_training_jobs = models.PositiveIntegerField(null=True, blank=True)

    LIMIT_NAMES = ("requests_per_minute", "tokens_per_minute", "max_concurrent_generations", "token_budget",
                   "budget_period_days", "max_queued_training_jobs")

    class Meta:
        abstract = True


class ApiKey(LimitFields):
    """An API key; the database keeps a lookup prefix and a hash, never the key."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    lookup = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    scopes = models.JSONField(default=default_scopes, help_text='Any of "inference", "training", "admin".')
    # A key minted by another key (POST /keys) lives within its parent's powers and spends its family's
    # one budget: the counters belong to `budget_root`, the operator-made key at the top (docs/limits.md).
    # The root is stored, not walked up to, because every admission needs it.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="minted",
                               editable=False, help_text="The key that minted this one; empty: made by an operator.")
    budget_root = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="+",
                                    editable=False, help_text="The key whose limit counters this one shares.")

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.display_prefix}… ({self.user})"

    @property
    def display_prefix(self) -> str:
        return f"{KEY_PREFIX}_{self.lookup}"

    @property
    def budget_id(self) -> int:
        """The id the limit counters are kept under: one budget per key family."""
        return self.budget_root_id or self.id

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())

    def clean(self):
        # The admin's form (and any other full_clean) stores scopes the way api_key_create does.
        unknown = set(self.scopes or []) - set(Scope.values)
        if unknown:
            raise ValidationError({"scopes": f"Unknown scope(s): {', '.join(sorted(unknown))}."})
        self.scopes = normalized_scopes(self.scopes or [])

    @property
    def status(self) -> str:
        """active, expired or revoked (revoked wins: it is the operator's decision)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "expired"
        return "active"

    def has_scope(self, scope: str) -> bool:
        # Admin also needs a staff user: a scope never grants more than the user has.
        return scope in self.scopes and (scope != Scope.ADMIN or self.user.is_staff)

    @staticmethod
    def generate() -> tuple[str, str, str]:
        """A new key as (raw key, lookup, hash)."""
        lookup = secrets.token_hex(6)
        raw = f"{KEY_PREFIX}_{lookup}_{secrets.token_urlsafe(32)}"
        return raw, lookup, hash_key(raw)

    def matches(self, raw_key: str) -> bool:
        return hmac.compare_digest(self.key_hash, hash_key(raw_key))

    def revoke(self) -> None:
        """Mark the row only; services.api_keys_revoke also stops the key's running requests."""
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


class Profile(LimitFields):
    """Per-user settings."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="aihub_profile")
    preferred_model = models.CharField(max_length=200, blank=True,
                                       help_text="Model chosen for model=auto when it suits the task and fits.")
    # Off: the user's messages are not embedded (and their vectors are deleted); their conversation search
    # is full-text only. Set with PATCH /me (apps/chat/message_embeddings.py).
    conversation_embeddings = models.BooleanField(default=True,
                                                  help_text="Embed this user's messages for conversation search.")

    def __str__(self) -> str:
        return f"settings of {self.user}"
