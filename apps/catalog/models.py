from django.db import models


class ModelKind(models.TextChoices):
    CHAT = "chat"
    CODE = "code"
    VISION = "vision"
    AUDIO = "audio"
    EMBEDDING = "embedding"


class ModelSource(models.TextChoices):
    DIRECTORY = "directory", "Local directory (transformers format)"
    GGUF = "gguf", "GGUF file (converted once to safetensors)"
    HUB_CACHE = "hub_cache", "Hugging Face id from the local cache"


class ModelEntry(models.Model):
    """A model the hub can serve. The worker loads it from `path`."""

    id = models.CharField(primary_key=True, max_length=200, help_text="Ollama-style id, e.g. smollm2:135m")
    kind = models.CharField(max_length=20, choices=ModelKind.choices, default=ModelKind.CHAT)
    source = models.CharField(max_length=20, choices=ModelSource.choices, default=ModelSource.DIRECTORY)
    source_ref = models.CharField(max_length=500, blank=True, help_text="Where it came from (GGUF file, hub id).")
    path = models.CharField(max_length=500, help_text="Directory the worker loads (config + safetensors).")
    context_length = models.PositiveIntegerField(help_text="Prompt plus completion tokens the model accepts.")
    size_bytes = models.BigIntegerField(default=0, help_text="Size of the weights on disk.")
    owned_by = models.CharField(max_length=100, default="aihub")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "model"
        ordering = ["id"]

    def __str__(self) -> str:
        return self.id
