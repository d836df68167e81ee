"""Vector stores (OpenAI's vector_store, vector_store.file, vector_store.file_batch) and their chunks.

One chunk table serves every store, whatever its embedding model: the `embedding` column is a
`vector` without a fixed size, `dims` says each row's size, and one partial HNSW index per size
(`(embedding::vector(N)) vector_cosine_ops WHERE dims = N`, apps/vectorstores/indexes.py) serves
the stores of every model with N dimensions. docs/vector_stores.md says why.

Counts (`file_counts`, `usage_bytes`) are not stored on the store: they are computed from the file
rows when a store is shown (selectors.store_counts), so a deletion, a cascade or a crash can never
leave them wrong.
"""
import uuid

from django.conf import settings
from django.db import models
from pgvector.django import VectorField


class VectorStore(models.Model):
    class Status(models.TextChoices):
        # OpenAI's: in_progress while a file is being embedded, completed otherwise, expired past expires_at.
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"
        EXPIRED = "expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="vector_stores")
    name = models.CharField(max_length=256, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    # Recorded per store: a store keeps answering with the model its chunks were embedded with after the
    # hub's default changes. Not a foreign key: a removed model leaves the store (its search then says so).
    embedding_model = models.CharField(max_length=200)
    dimensions = models.PositiveIntegerField()
    chunking_strategy = models.JSONField(
        default=dict, help_text="The store's default for files added without one: {type: static, static: {...}}")
    expires_after = models.JSONField(null=True, blank=True, help_text="{anchor: last_active_at, days}")
    expires_at = models.DateTimeField(null=True, blank=True)
    last_active_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    @property
    def public_id(self) -> str:
        return f"vs_{self.id.hex}"

    def __str__(self) -> str:
        return f"{self.name or self.public_id} ({self.embedding_model})"


class VectorStoreFileBatch(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    store = models.ForeignKey(VectorStore, on_delete=models.CASCADE, related_name="file_batches")
    cancelled = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    @property
    def public_id(self) -> str:
        return f"vsfb_{self.id.hex}"


class VectorStoreFile(models.Model):
    """A file of /files in a store: its chunks, embedded in the background (apps/vectorstores/ingestion.py)."""

    class Status(models.TextChoices):
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    store = models.ForeignKey(VectorStore, on_delete=models.CASCADE, related_name="files")
    # Deleting the uploaded file takes it out of every store, chunks included (a cascade: nothing to forget).
    file = models.ForeignKey("training.TrainingFile", on_delete=models.CASCADE, related_name="vector_store_files")
    batch = models.ForeignKey(VectorStoreFileBatch, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="files")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.IN_PROGRESS, db_index=True)
    last_error = models.JSONField(null=True, blank=True, help_text="{code, message} once failed")
    chunking_strategy = models.JSONField(help_text="Resolved: {type: static, static: {max_chunk_size_tokens, "
                                                   "chunk_overlap_tokens}}")
    attributes = models.JSONField(default=dict, blank=True)
    usage_bytes = models.PositiveBigIntegerField(default=0, help_text="Chunk text and vectors, once completed.")
    chunk_count = models.PositiveIntegerField(default=0)
    # Each (re)queueing bumps the generation and sends it with the task: a message from before a
    # re-embed or a cancel finds another generation and does nothing (ingestion.py).
    generation = models.PositiveIntegerField(default=1)
    attempts = models.PositiveIntegerField(default=0, help_text="Ingestion tasks started in this generation.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["store", "file"], name="one_entry_per_file_and_store")]

    @property
    def public_id(self) -> str:
        return self.file.public_id  # OpenAI's vector_store.file id is the file's id

    def __str__(self) -> str:
        return f"{self.file_id} in {self.store_id} ({self.status})"


class Chunk(models.Model):
    """A piece of a file's text with its embedding. `attributes` repeat the file's, so filters need no join."""

    id = models.BigAutoField(primary_key=True)
    store = models.ForeignKey(VectorStore, on_delete=models.CASCADE, related_name="+")
    file = models.ForeignKey(VectorStoreFile, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField(help_text="Its place in the file, from 0.")
    text = models.TextField()
    tokens = models.PositiveIntegerField()
    attributes = models.JSONField(default=dict, blank=True)
    dims = models.PositiveSmallIntegerField()
    embedding = VectorField()  # no fixed size: one table for every model (module docstring)

    class Meta:
        indexes = [models.Index(fields=["file", "index"], name="vectorstores_chunk_file_index")]
