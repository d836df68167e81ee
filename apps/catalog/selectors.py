from apps.core.errors import NotFoundError

from .models import ModelEntry


def model_list():
    return ModelEntry.objects.filter(enabled=True)


def model_get(*, model_id: str) -> ModelEntry:
    entry = ModelEntry.objects.filter(id=model_id, enabled=True).first()
    if entry is None:
        raise NotFoundError(f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
    return entry
