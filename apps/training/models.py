import uuid

from django.conf import settings
from django.db import models


class TrainingFile(models.Model):
    """An uploaded dataset (OpenAI's file object, purpose fine-tune)."""

    class Status(models.TextChoices):
        UPLOADED = "uploaded"
        PROCESSED = "processed"
        ERROR = "error"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="training_files")
    filename = models.CharField(max_length=255)
    purpose = models.CharField(max_length=40, default="fine-tune")
    bytes = models.PositiveBigIntegerField(default=0)
    path = models.CharField(max_length=500)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.UPLOADED)
    format = models.CharField(max_length=20, blank=True, help_text="chat or instruction, once validated")
    examples = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True, help_text="The first bad lines: [{line, message}]")
    validation_attempts = models.PositiveIntegerField(
        default=0, help_text="Validation tasks started on this file; a redelivered one beyond the cap ends it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    @property
    def public_id(self) -> str:
        return f"file-{self.id.hex}"

    def __str__(self) -> str:
        return f"{self.filename} ({self.public_id})"


class TrainingJob(models.Model):
    """A fine-tuning job (OpenAI's fine_tuning.job, plus live progress)."""

    class Status(models.TextChoices):
        VALIDATING_FILES = "validating_files"
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Type(models.TextChoices):
        LORA = "lora"
        QLORA = "qlora"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="training_jobs")
    api_key = models.ForeignKey("accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL)
    name = models.CharField(max_length=200, blank=True)
    base_model = models.CharField(max_length=200)
    training_type = models.CharField(max_length=10, choices=Type.choices, default=Type.LORA)
    training_file = models.ForeignKey(TrainingFile, null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="jobs")
    validation_file = models.ForeignKey(TrainingFile, null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="validation_jobs")
    dataset_path = models.CharField(max_length=500, blank=True, help_text="Resolved path under AIHUB_DATASETS_ROOT.")
    hyperparameters = models.JSONField(default=dict)
    suffix = models.CharField(max_length=40, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.VALIDATING_FILES, db_index=True)
    status_reason = models.CharField(max_length=300, blank=True, help_text="Why it waits, when it does.")
    error = models.JSONField(null=True, blank=True)
    fine_tuned_model = models.CharField(max_length=300, blank=True)
    trained_tokens = models.PositiveBigIntegerField(default=0)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    epoch = models.FloatField(default=0)
    loss = models.FloatField(null=True, blank=True)
    learning_rate = models.FloatField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    eta_seconds = models.FloatField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    validation_attempts = models.PositiveIntegerField(
        default=0, help_text="Validation tasks started on this job; a redelivered one beyond the cap fails it.")
    worker = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    FINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    @property
    def public_id(self) -> str:
        return f"ftjob-{self.id.hex}"

    @property
    def planned_model_id(self) -> str:
        """The catalog id its adapter is registered under when it succeeds (`fine_tuned_model` from then on)."""
        return f"ft:{self.base_model}:{self.suffix or 'custom'}:{self.id.hex[:8]}"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINAL

    def __str__(self) -> str:
        return f"{self.public_id} ({self.status})"


class TrainingEvent(models.Model):
    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="events")
    level = models.CharField(max_length=10, default="info")
    type = models.CharField(max_length=10, default="message", help_text="message or metrics")
    message = models.CharField(max_length=500)
    data = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


class TrainingCheckpoint(models.Model):
    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveIntegerField()
    path = models.CharField(max_length=500)
    bytes = models.PositiveBigIntegerField(default=0, help_text="Disk used, counted in its owner's storage quota.")
    metrics = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-step"]
        constraints = [models.UniqueConstraint(fields=["job", "step"], name="one_checkpoint_per_step")]
