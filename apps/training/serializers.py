from rest_framework import serializers

from apps.core.fields import StrictCharField, StrictFloatField, StrictIntegerField

from .models import TrainingCheckpoint, TrainingFile, TrainingJob


class FileSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    object = serializers.SerializerMethodField()
    created_at = serializers.SerializerMethodField()
    status_details = serializers.SerializerMethodField()

    class Meta:
        model = TrainingFile
        fields = ["id", "object", "bytes", "created_at", "filename", "purpose", "status", "status_details",
                  "format", "examples", "errors"]

    def get_object(self, obj) -> str:
        return "file"

    def get_created_at(self, obj) -> int:
        return int(obj.created_at.timestamp())

    def get_status_details(self, obj) -> str | None:
        if not obj.errors:
            return None
        first = obj.errors[0]
        return f"line {first['line']}: {first['message']}" if first.get("line") else first["message"]


class LoraKnobsSerializer(serializers.Serializer):
    """The LoRA/QLoRA settings: fields of POST /training/jobs, and the `lora` extension of /fine_tuning/jobs."""

    training_type = serializers.ChoiceField(choices=TrainingJob.Type.choices, required=False)
    lora_r = StrictIntegerField(required=False, min_value=1, max_value=512)
    lora_alpha = StrictIntegerField(required=False, min_value=1, max_value=4096)
    lora_dropout = StrictFloatField(required=False, min_value=0, max_value=0.9)
    target_modules = serializers.ListField(child=StrictCharField(), required=False, allow_empty=False)
    gradient_accumulation_steps = StrictIntegerField(required=False, min_value=1, max_value=1024)
    max_seq_length = StrictIntegerField(required=False, min_value=16, max_value=131072)
    checkpoint_every = StrictIntegerField(required=False, min_value=1)


LEARNING_RATE_BOUNDS = (1e-7, 1.0)
MAX_EPOCHS = 100
MAX_BATCH_SIZE = 512


def suffix_field() -> serializers.RegexField:
    return serializers.RegexField(r"^[a-z0-9-]{1,40}$", required=False, allow_blank=True, allow_null=True,
                                  error_messages={"invalid": "up to 40 lowercase letters, digits and dashes."})


class JobCreateSerializer(LoraKnobsSerializer):
    name = StrictCharField(required=False, allow_blank=True, max_length=200)
    base_model = StrictCharField()
    dataset_path = StrictCharField(required=False, allow_blank=True)
    training_file = StrictCharField(required=False, allow_blank=True)
    validation_file = StrictCharField(required=False, allow_blank=True, allow_null=True)
    learning_rate = StrictFloatField(required=False, min_value=LEARNING_RATE_BOUNDS[0],
                                     max_value=LEARNING_RATE_BOUNDS[1])
    num_epochs = StrictIntegerField(required=False, min_value=1, max_value=MAX_EPOCHS)
    batch_size = StrictIntegerField(required=False, min_value=1, max_value=MAX_BATCH_SIZE)
    seed = StrictIntegerField(required=False)
    suffix = suffix_field()


class JobSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    object = serializers.SerializerMethodField()
    model = serializers.CharField(source="base_model")
    created_at = serializers.SerializerMethodField()
    finished_at = serializers.SerializerMethodField()
    training_file = serializers.SerializerMethodField()
    validation_file = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()

    class Meta:
        model = TrainingJob
        fields = ["id", "object", "name", "model", "training_type", "status", "status_reason", "created_at",
                  "finished_at", "fine_tuned_model", "trained_tokens", "training_file", "validation_file",
                  "dataset_path", "hyperparameters", "suffix", "error", "progress", "attempts"]

    def get_object(self, obj) -> str:
        return "fine_tuning.job"

    def get_created_at(self, obj) -> int:
        return int(obj.created_at.timestamp())

    def get_finished_at(self, obj) -> int | None:
        return int(obj.finished_at.timestamp()) if obj.finished_at else None

    def get_training_file(self, obj) -> str | None:
        return obj.training_file.public_id if obj.training_file_id else None

    def get_validation_file(self, obj) -> str | None:
        return obj.validation_file.public_id if obj.validation_file_id else None

    def get_progress(self, obj) -> dict:
        return {"step": obj.step, "total_steps": obj.total_steps, "epoch": obj.epoch, "loss": obj.loss,
                "learning_rate": obj.learning_rate, "tokens_per_second": obj.tokens_per_second,
                "eta_seconds": obj.eta_seconds}


class CheckpointSerializer(serializers.ModelSerializer):
    id = serializers.SerializerMethodField()
    object = serializers.SerializerMethodField()
    step_number = serializers.IntegerField(source="step")
    created_at = serializers.SerializerMethodField()

    class Meta:
        model = TrainingCheckpoint
        fields = ["id", "object", "step_number", "metrics", "created_at"]

    def get_id(self, obj) -> str:
        return f"ftckpt-{obj.id}"

    def get_object(self, obj) -> str:
        return "fine_tuning.job.checkpoint"

    def get_created_at(self, obj) -> int:
        return int(obj.created_at.timestamp())
