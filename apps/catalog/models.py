from django.conf import settings
from django.db import models


class ModelKind(models.TextChoices):
    CHAT = "chat"
    CODE = "code"
    VISION = "vision"
    AUDIO = "audio"  # speech to text (Whisper): /audio/transcriptions, /audio/translations
    SPEECH = "speech"  # text to speech: /audio/speech
    EMBEDDING = "embedding"


class ModelSource(models.TextChoices):
    DIRECTORY = "directory", "Local directory (transformers format)"
    GGUF = "gguf", "GGUF file (converted once to safetensors)"
    HUB_CACHE = "hub_cache", "Hugging Face id from the local cache"


class Quantization(models.TextChoices):
    NONE = "none"
    BNB_8BIT = "bnb-8bit", "bitsandbytes 8-bit"
    BNB_4BIT = "bnb-4bit", "bitsandbytes 4-bit (nf4)"


class Dtype(models.TextChoices):
    AUTO = "auto", "auto (float16 on a GPU, float32 on the CPU)"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class Pooling(models.TextChoices):
    """How an embedding model turns its token vectors into one vector (sentence-transformers' Pooling)."""

    MEAN = "mean", "Mean over the tokens (attention mask)"
    CLS = "cls", "The first ([CLS]) token"
    LAST = "last", "The last token"


class ToolCalling(models.TextChoices):
    NATIVE = "native", "Native (the chat template renders tools)"
    GENERIC = "generic", "Generic (the hub's documented tool prompt)"


class Visibility(models.TextChoices):
    PRIVATE = "private", "Private (the owner only)"
    SHARED = "shared", "Shared (the owner and the users listed)"
    PUBLIC = "public", "Public (every user)"


# What each kind can do; a model entry may list more.
KIND_CAPABILITIES = {
    ModelKind.CHAT: ["chat"],
    ModelKind.CODE: ["chat", "code"],
    ModelKind.VISION: ["chat", "vision"],
    ModelKind.AUDIO: ["audio", "transcription"],  # a multilingual Whisper adds "translation"
    ModelKind.SPEECH: ["speech"],
    ModelKind.EMBEDDING: ["embedding"],
}


class ModelEntry(models.Model):
    """A model the hub can serve. The worker loads it from `path`."""

    id = models.CharField(primary_key=True, max_length=200, help_text="Ollama-style id, e.g. smollm2:135m")
    kind = models.CharField(max_length=20, choices=ModelKind.choices, default=ModelKind.CHAT)
    source = models.CharField(max_length=20, choices=ModelSource.choices, default=ModelSource.DIRECTORY)
    source_ref = models.CharField(max_length=500, blank=True, help_text="Where it came from (GGUF file, hub id).")
    path = models.CharField(max_length=500, help_text="Directory the worker loads (config + safetensors).")
    capabilities = models.JSONField(default=list, blank=True, help_text="e.g. [\"chat\", \"code\"]")
    dtype = models.CharField(max_length=20, choices=Dtype.choices, default=Dtype.AUTO)
    quantization = models.CharField(max_length=20, choices=Quantization.choices, default=Quantization.NONE)
    context_length = models.PositiveIntegerField(help_text="Prompt plus completion tokens the model accepts.")
    max_completion_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="Cap on max_tokens for this model (empty: the context length).")
    parameter_count = models.BigIntegerField(default=0)
    quantisable_parameter_count = models.BigIntegerField(
        default=0, help_text="Parameters in linear layers (what bitsandbytes quantises).")
    size_bytes = models.BigIntegerField(default=0, help_text="Size of the weights on disk.")
    owned_by = models.CharField(max_length=100, default="aihub",
                                help_text="What the API shows as owned_by for an operator model.")
    # Who may see and use the model (apps/catalog/selectors.py decides, docs/models.md): an operator model
    # (no owner) is public whatever `visibility` says; a user's model (a fine-tune) is private by default.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="owned_models",
                              help_text="The user whose model this is (a fine-tune); empty: an operator model.")
    visibility = models.CharField(max_length=10, choices=Visibility.choices, default=Visibility.PRIVATE,
                                  help_text="For a model with an owner; operator models are always public.")
    shared_with = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="models_shared_with",
                                         help_text="Who else may use the model when its visibility is 'shared'.")
    base_model = models.CharField(max_length=200, blank=True,
                                  help_text="For a fine-tuned adapter: the catalog id of its base model.")
    adapter_path = models.CharField(max_length=500, blank=True, help_text="LoRA adapter directory (safetensors).")
    # Embedding models only (kind `embedding`); read from the model directory by importmodel (docs/models.md).
    embedding_dimensions = models.PositiveIntegerField(
        null=True, blank=True, help_text="Length of the vectors an embedding model returns.")
    pooling = models.CharField(max_length=10, choices=Pooling.choices, blank=True,
                               help_text="How an embedding model pools its token vectors into one.")
    normalize_embeddings = models.BooleanField(
        default=True, help_text="Scale every embedding to length 1 (cosine similarity is then a dot product).")
    supports_dimensions = models.BooleanField(
        default=False, help_text="The model was trained for truncation (Matryoshka): requests may ask for fewer "
                                 "`dimensions`.")
    # Detected from the chat template at registration (apps/catalog/tool_support.py, docs/api.md).
    tool_calling = models.CharField(max_length=10, choices=ToolCalling.choices, default=ToolCalling.GENERIC,
                                    help_text="native: its chat template renders tools; generic: the hub's prompt.")
    tool_parser = models.CharField(max_length=20, default="generic",
                                   help_text="The format its tool calls are read in: hermes, llama3, mistral, generic.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "model"
        ordering = ["id"]

    def __str__(self) -> str:
        return self.id

    @property
    def effective_visibility(self) -> str:
        return Visibility.PUBLIC if self.owner_id is None else self.visibility

    def estimated_bytes(self, device_type: str = "cuda") -> int:
        """Memory when loaded on a device of this type (a CPU loads float32 where a GPU loads float16)."""
        from .footprint import estimate_bytes

        return estimate_bytes(parameter_count=self.parameter_count,
                              quantisable_count=self.quantisable_parameter_count, dtype=self.dtype,
                              quantization=self.quantization, device_type=device_type)

    def estimated_bytes_by_device(self) -> dict[str, int]:
        return {device: self.estimated_bytes(device) for device in ("cuda", "cpu")}
