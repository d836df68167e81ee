import uuid

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector
from django.db import models
from django.db.models.functions import Left
from django.utils import timezone
from pgvector.django import VectorField


class Role(models.TextChoices):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"  # a tool's result, answering an assistant message's tool call


# Conversation search (docs/conversation_search.md) looks at what people wrote and what the models answered;
# system prompts repeat in every conversation and tool results are machine output.
SEARCHED_ROLES = (Role.USER, Role.ASSISTANT)
# Full-text search: the text search configuration, and the characters of a message it reads. A tsvector holds
# at most 1 MiB; 100,000 characters stay well below it whatever the text, so no message can fail to index.
SEARCH_CONFIG = "english"
SEARCH_MAX_CHARS = 100_000


def message_search_vector() -> SearchVector:
    """The expression of the full-text index; a query must use this very expression for the index to serve it."""
    return SearchVector(Left("content", SEARCH_MAX_CHARS), config=SEARCH_CONFIG)


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200, help_text="Model of the latest completion.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Message(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=20, choices=Role.choices)
    content = models.TextField(blank=True)
    # OpenAI's function calling: an assistant message may call tools instead of (or besides) answering,
    # and a `tool` message carries one call's result back.
    tool_calls = models.JSONField(null=True, blank=True, help_text="The assistant's tool calls, OpenAI's shape.")
    tool_call_id = models.CharField(max_length=64, blank=True, help_text="The call a tool message answers.")
    # A message with images or video: its content parts in order, media as stored image ids (apps/vision).
    parts = models.JSONField(null=True, blank=True, help_text="Text, image and video parts; null for text only.")
    # Retrieval in chat (apps/chat/retrieval.py): the chunks an answer's prompt held, without their text.
    retrieval = models.JSONField(null=True, blank=True, help_text="The vector store chunks the answer was given.")
    generation = models.OneToOneField(
        "GenerationRequest", null=True, blank=True, on_delete=models.SET_NULL, related_name="answer",
        help_text="The request that produced this message (assistant answers only).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        # An expression index rather than a stored tsvector column: nothing to rewrite or keep in step, and
        # no tsvector read with every message a conversation shows.
        indexes = [GinIndex(message_search_vector(), name="chat_message_fulltext",
                            condition=models.Q(role__in=SEARCHED_ROLES))]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"


class MessageEmbedding(models.Model):
    """One passage of a message, embedded in the background for conversation search.

    `model` says which model made the vector: a search compares a query only with vectors of the model that
    embeds it, so a change of model never mixes two spaces. The vector column has no fixed size (models
    differ); each model gets its own partial HNSW index over its size (apps/chat/message_embeddings.py).
    """

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="embeddings")
    # The conversation's owner, copied here: the vector search filters on it inside the index scan.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    model = models.CharField(max_length=200)
    passage = models.PositiveSmallIntegerField(help_text="Index of the passage within the message.")
    start = models.PositiveIntegerField(help_text="The passage's first character in the message.")
    end = models.PositiveIntegerField(help_text="One past the passage's last character.")
    embedding = VectorField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "model", "passage"],
                                               name="chat_message_embedding_once")]
        indexes = [models.Index(fields=["user", "model"], name="chat_msgemb_user_model")]

    def __str__(self) -> str:
        return f"{self.message_id}:{self.passage} ({self.model})"


class GenerationRequest(models.Model):
    """One chat completion, from the API call to the stored answer."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generations")
    api_key = models.ForeignKey("accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL)
    # Usage records outlive their conversation: deleting it scrubs their text and keeps the numbers.
    conversation = models.ForeignKey(Conversation, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="generations")
    model = models.CharField(max_length=200)
    route = models.CharField(max_length=300, blank=True, help_text="Why this model and worker were chosen.")
    params = models.JSONField(default=dict, help_text="Sampling parameters as sent to the engine.")
    prompt_messages = models.JSONField(help_text="The exact message list the model sees (history included).")
    state = models.CharField(max_length=20, choices=State.choices, default=State.QUEUED, db_index=True)
    finish_reason = models.CharField(max_length=20, blank=True)
    error = models.JSONField(null=True, blank=True)
    completion = models.TextField(blank=True)
    # The answer beside its text (docs/api.md): {"choices": [{"index", "text", "finish_reason", "logprobs",
    # "tool_calls"}, ...]} when a choice holds more than text or n > 1. `completion` and `finish_reason`
    # stay the first choice's, so every reader of plain answers keeps working.
    output = models.JSONField(default=dict, blank=True, help_text="Choices, tool calls and logprobs.")
    metadata = models.JSONField(default=dict, blank=True,
                                help_text="The client's metadata: up to 16 string pairs (OpenAI's `metadata`).")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True, help_text="hostname:pid of the worker that ran it.")
    # Counted by the worker's claim (queued -> running); past AIHUB_TASK_MAX_ATTEMPTS the request fails.
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Times a worker started it.")
    # When its message was last published: the sweeper re-publishes a row that waited too long unclaimed.
    queued_at = models.DateTimeField(default=timezone.now)
    cache_hit = models.BooleanField(default=False, help_text="Answered from the response cache, not a GPU.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    queue_wait_ms = models.FloatField(null=True, blank=True)
    time_to_first_token_ms = models.FloatField(null=True, blank=True, help_text="From enqueue to first token.")
    total_ms = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The dashboard's recent failures, and the admin list filtered by state, newest first.
            models.Index(fields=["state", "-created_at"], name="generation_state_recent"),
            # A model's figures (admin model page, analytics.model_figures) read its recent rows; the admin's
            # filter by model lists the distinct models from it: an index-only scan, not a table scan.
            models.Index(fields=["model", "created_at"], name="generation_model_created"),
        ]

    def __str__(self) -> str:
        return f"{self.completion_id} ({self.state})"

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.id.hex}"

    @property
    def is_finished(self) -> bool:
        return self.state in (self.State.SUCCEEDED, self.State.FAILED, self.State.CANCELLED)

    @property
    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
