"""Reads of the catalog. Who may see and use which model is decided here, and only here (docs/models.md).

An operator model (no owner) is public. A user's model (a fine-tune) is seen by
its owner, by the users it is shared with when its visibility is `shared`, by
everyone when `public`, and by staff calling with an admin-scope key. To
everyone else it does not exist: the same 404 `model_not_found` as an unknown
id, so a private model's name cannot be probed.
"""
from __future__ import annotations

from django.db.models import Q, QuerySet

from apps.accounts.models import Scope
from apps.core.errors import AppError, NotFoundError

from .models import ModelEntry, ModelKind, Visibility


def model_sees_all(*, key) -> bool:
    """Staff with an admin-scope key see and use every model (has_scope checks is_staff too)."""
    return key is not None and key.has_scope(Scope.ADMIN)


def model_list(*, user, key=None) -> QuerySet[ModelEntry]:
    """The enabled models `user` may see and use (every one for an admin-scope key of a staff user)."""
    models = ModelEntry.objects.filter(enabled=True)
    if model_sees_all(key=key):
        return models
    # A subquery, not a join on shared_with: a join would repeat a model once per user it is shared with.
    shared_with_user = ModelEntry.shared_with.through.objects.filter(user=user).values("modelentry_id")
    return models.filter(Q(owner__isnull=True) | Q(owner=user) | Q(visibility=Visibility.PUBLIC)
                         | Q(visibility=Visibility.SHARED, id__in=shared_with_user))


def model_get(*, user, model_id: str, key=None) -> ModelEntry:
    entry = model_list(user=user, key=key).filter(id=model_id).first()
    if entry is None:
        raise NotFoundError(f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
    return entry


# The kind of model each use needs; chat takes any kind that generates text.
USE_KINDS = {
    "embeddings": ({ModelKind.EMBEDDING}, "/embeddings needs an embedding model"),
    "transcription": ({ModelKind.AUDIO}, "/audio/transcriptions and /audio/translations need a speech-to-text "
                                         "(audio) model"),
    "speech": ({ModelKind.SPEECH}, "/audio/speech needs a text-to-speech (speech) model"),
}
NOT_CHAT_KINDS = {ModelKind.EMBEDDING, ModelKind.AUDIO, ModelKind.SPEECH}


def model_check_use(*, entry: ModelEntry, use: str) -> None:
    """A request must name a model of the kind its endpoint serves (chat no embedding model, /embeddings no chat
    model, /audio/* their audio kinds): 400 naming `model`."""
    if use == "chat":
        if entry.kind in NOT_CHAT_KINDS:
            raise AppError(f"The model '{entry.id}' is a{'n' if entry.kind[0] in 'aeiou' else ''} {entry.kind} "
                           "model; it does not chat.", param="model", code="model_not_supported")
        return
    kinds, needs = USE_KINDS[use]
    if entry.kind not in kinds:
        raise AppError(f"The model '{entry.id}' is a{'n' if entry.kind[0] in 'aeiou' else ''} {entry.kind} model; "
                       f"{needs}.", param="model", code="model_not_supported")


def model_may_manage(*, entry: ModelEntry, user, key=None) -> bool:
    """The owner, or staff with an admin-scope key, may change a user's model and see who owns it."""
    return entry.owner_id is not None and (entry.owner_id == user.id or model_sees_all(key=key))


def model_get_for_change(*, user, model_id: str, key=None) -> ModelEntry:
    """A model its caller may change or delete: 404 if invisible to them, 403 if visible but not theirs."""
    entry = model_get(user=user, model_id=model_id, key=key)
    if entry.owner_id is None:
        raise AppError(f"The model '{model_id}' is an operator model: it is public and managed by the operator "
                       "(admin, importmodel), not through the API.", status=403, type="permission_error",
                       param="model", code="operator_model")
    if not model_may_manage(entry=entry, user=user, key=key):
        raise AppError(f"Only the owner of the model '{model_id}' may change or delete it.", status=403,
                       type="permission_error", param="model", code="not_model_owner")
    return entry
