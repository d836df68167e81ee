"""OpenAI's fine_tuning API shapes over our training jobs (docs/api.md, "Fine-tuning, OpenAI's paths").

Requests: `fine_tuning.jobs.create` with OpenAI's fields (and `lora`, our
documented extension); every OpenAI field is declared, so the ones the hub does
not implement are refused by name. Responses: `fine_tuning.job`,
`fine_tuning.job.event` and `fine_tuning.job.checkpoint`, as the SDK reads them.
"""
from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.core.errors import AppError
from apps.core.fields import QueryIntegerField, StrictCharField, StrictFloatField, StrictIntegerField
from apps.core.parameters import UnsupportedParameter

from .models import TrainingCheckpoint, TrainingJob
from .serializers import MAX_BATCH_SIZE, MAX_EPOCHS, LoraKnobsSerializer, suffix_field
from .services import DEFAULT_HYPERPARAMETERS

AUTO = "auto"
# OpenAI's learning_rate_multiplier scales our default learning rate (2e-4): 1 means the default.
BASE_LEARNING_RATE = DEFAULT_HYPERPARAMETERS["learning_rate"]
LIST_LIMIT_MAX = 100



@extend_schema_field({"oneOf": [{"type": "string", "enum": [AUTO]}, {"type": "number"}], "nullable": True})
class AutoOr(serializers.Field):
    """A number, or "auto" (the hub's default): "auto" and null come back as None."""

    default_error_messages = {"type": 'must be "auto" or a number in range.'}

    def __init__(self, number: serializers.Field, **kwargs):
        self.number = number
        super().__init__(required=False, allow_null=True, **kwargs)

    def to_internal_value(self, data):
        if data == AUTO:
            return None
        return self.number.run_validation(data)

    def to_representation(self, value):
        return value


def auto_or(number: serializers.Field, **kwargs) -> AutoOr:
    """An AutoOr whose schema states the number's own bounds, so that the schema accepts what the field does."""
    bounds = {"type": "integer" if isinstance(number, serializers.IntegerField) else "number",
              "minimum": number.min_value, "maximum": number.max_value}
    schema = {"oneOf": [{"type": "string", "enum": [AUTO]}, bounds], "nullable": True}
    return extend_schema_field(schema)(type("BoundedAutoOr", (AutoOr,), {}))(number, **kwargs)


class HyperparametersSerializer(serializers.Serializer):
    n_epochs = auto_or(StrictIntegerField(min_value=1, max_value=MAX_EPOCHS))
    batch_size = auto_or(StrictIntegerField(min_value=1, max_value=MAX_BATCH_SIZE))
    learning_rate_multiplier = auto_or(StrictFloatField(min_value=1e-3, max_value=5000),
                                       help_text="Scales the default learning rate, 2e-4.")


class LoraExtensionSerializer(LoraKnobsSerializer):
    pass


class SupervisedMethodSerializer(serializers.Serializer):
    hyperparameters = HyperparametersSerializer(required=False)


@extend_schema_field({"type": "string", "enum": ["supervised"]})
class MethodTypeField(StrictCharField):
    """OpenAI's method types: supervised is ours (LoRA or QLoRA); dpo and reinforcement are refused by name."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if value != "supervised":
            raise UnsupportedParameter("method.type", why=f"'{value}' fine-tuning is not supported; this hub "
                                                           "trains supervised (LoRA or QLoRA) only.")
        return value


class MethodSerializer(serializers.Serializer):
    # Nested undeclared keys are refused by the pipeline (apps/core/parameters.py); these are OpenAI's.
    openai_parameters = frozenset({"dpo", "reinforcement"})

    type = MethodTypeField(help_text="supervised (LoRA or QLoRA).")
    supervised = SupervisedMethodSerializer(required=False)


class FineTuningJobCreateSerializer(serializers.Serializer):
    openai_parameters = frozenset({"integrations", "metadata"})  # refused by name (apps/core/parameters.py)

    model = StrictCharField(max_length=200, help_text="The base model: a catalog model id.")
    training_file = StrictCharField(help_text="A file id from POST /files (purpose fine-tune).")
    validation_file = StrictCharField(required=False, allow_null=True, allow_blank=True)
    hyperparameters = HyperparametersSerializer(required=False, allow_null=True,
                                                help_text="Deprecated by OpenAI in favour of method; both work.")
    method = MethodSerializer(required=False, allow_null=True)
    suffix = suffix_field()
    seed = StrictIntegerField(required=False, allow_null=True)
    lora = LoraExtensionSerializer(required=False, allow_null=True,
                               help_text="AI Hub extension: training_type (lora or qlora) and the LoRA settings.")

    def validate(self, attrs):
        top = {k: v for k, v in (attrs.get("hyperparameters") or {}).items() if v is not None}
        supervised = (attrs.get("method") or {}).get("supervised") or {}
        nested = {k: v for k, v in (supervised.get("hyperparameters") or {}).items() if v is not None}
        for name in top.keys() & nested.keys():
            if top[name] != nested[name]:
                raise AppError(f"hyperparameters.{name} and method.supervised.hyperparameters.{name} differ; "
                               "give it once.", param=f"hyperparameters.{name}", code="invalid_value")
        attrs["hyperparameters"] = {**top, **nested}
        return attrs


class ListQuerySerializer(serializers.Serializer):
    after = StrictCharField(required=False, help_text="The id of the last object of the previous page.")
    limit = QueryIntegerField(required=False, min_value=1, max_value=LIST_LIMIT_MAX)


def _timestamp(value) -> int | None:
    return int(value.timestamp()) if value else None


class FineTuningJobSerializer(serializers.Serializer):
    """OpenAI's fine_tuning.job; our statuses are OpenAI's, one for one (validating_files … cancelled)."""

    id = serializers.CharField(source="public_id")
    object = serializers.SerializerMethodField()
    model = serializers.CharField(source="base_model")
    status = serializers.ChoiceField(choices=TrainingJob.Status.choices)
    created_at = serializers.SerializerMethodField()
    finished_at = serializers.SerializerMethodField()
    fine_tuned_model = serializers.SerializerMethodField()
    organization_id = serializers.SerializerMethodField()
    result_files = serializers.SerializerMethodField()
    trained_tokens = serializers.SerializerMethodField()
    training_file = serializers.SerializerMethodField()
    validation_file = serializers.SerializerMethodField()
    hyperparameters = serializers.SerializerMethodField()
    method = serializers.SerializerMethodField()
    seed = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    estimated_finish = serializers.SerializerMethodField()
    integrations = serializers.SerializerMethodField()
    metadata = serializers.SerializerMethodField()
    user_provided_suffix = serializers.SerializerMethodField()
    lora = serializers.SerializerMethodField()

    def get_object(self, obj) -> str:
        return "fine_tuning.job"

    def get_created_at(self, obj) -> int:
        return _timestamp(obj.created_at)

    def get_finished_at(self, obj) -> int | None:
        return _timestamp(obj.finished_at)

    def get_fine_tuned_model(self, obj) -> str | None:
        return obj.fine_tuned_model or None

    def get_organization_id(self, obj) -> str:
        return f"user-{obj.user_id}"  # the hub has no organizations: the owner stands in

    def get_result_files(self, obj) -> list[str]:
        return []

    def get_trained_tokens(self, obj) -> int | None:
        return obj.trained_tokens if obj.is_finished else None  # OpenAI: null while the job runs

    def get_training_file(self, obj) -> str | None:
        return obj.training_file.public_id if obj.training_file_id else None

    def get_validation_file(self, obj) -> str | None:
        return obj.validation_file.public_id if obj.validation_file_id else None

    def get_hyperparameters(self, obj) -> dict:
        values = obj.hyperparameters
        return {"n_epochs": values.get("num_epochs"), "batch_size": values.get("batch_size"),
                "learning_rate_multiplier": round(values.get("learning_rate", BASE_LEARNING_RATE)
                                                  / BASE_LEARNING_RATE, 6)}

    def get_method(self, obj) -> dict:
        return {"type": "supervised", "supervised": {"hyperparameters": self.get_hyperparameters(obj)}}

    def get_seed(self, obj) -> int | None:
        return obj.hyperparameters.get("seed")

    def get_error(self, obj) -> dict | None:
        if not obj.error:
            return None
        return {"code": obj.error.get("code"), "message": obj.error.get("message"), "param": obj.error.get("param")}

    def get_estimated_finish(self, obj) -> int | None:
        if obj.status != TrainingJob.Status.RUNNING or obj.eta_seconds is None:
            return None
        from django.utils import timezone

        return int(timezone.now().timestamp() + obj.eta_seconds)

    def get_integrations(self, obj) -> list | None:
        return None

    def get_metadata(self, obj) -> dict | None:
        return None

    def get_user_provided_suffix(self, obj) -> str | None:
        return obj.suffix or None

    def get_lora(self, obj) -> dict:
        values = obj.hyperparameters
        return {"training_type": obj.training_type, **{name: values.get(name) for name in (
            "lora_r", "lora_alpha", "lora_dropout", "target_modules", "gradient_accumulation_steps",
            "max_seq_length", "checkpoint_every")}}


class FineTuningCheckpointSerializer(serializers.Serializer):
    id = serializers.SerializerMethodField()
    object = serializers.SerializerMethodField()
    created_at = serializers.SerializerMethodField()
    fine_tuned_model_checkpoint = serializers.SerializerMethodField()
    fine_tuning_job_id = serializers.SerializerMethodField()
    metrics = serializers.JSONField()
    step_number = serializers.IntegerField(source="step")

    def get_id(self, obj: TrainingCheckpoint) -> str:
        return f"ftckpt-{obj.id}"

    def get_object(self, obj) -> str:
        return "fine_tuning.job.checkpoint"

    def get_created_at(self, obj) -> int:
        return _timestamp(obj.created_at)

    def get_fine_tuned_model_checkpoint(self, obj: TrainingCheckpoint) -> str:
        """A name for the checkpoint, in OpenAI's form; checkpoints are resume points, not served models."""
        return f"{obj.job.fine_tuned_model or obj.job.planned_model_id}:ckpt-step-{obj.step}"

    def get_fine_tuning_job_id(self, obj: TrainingCheckpoint) -> str:
        return obj.job.public_id


class FineTuningEventSerializer(serializers.Serializer):
    """The event body our training service writes (`event_body`), declared for the schema."""

    id = serializers.CharField()
    object = serializers.CharField()
    created_at = serializers.IntegerField()
    level = serializers.CharField()
    message = serializers.CharField()
    type = serializers.CharField()
    data = serializers.JSONField(allow_null=True)


def page_body(items: list, *, has_more: bool) -> dict:
    """OpenAI's cursor page: the SDK passes the last item's id as `after` while has_more is true."""
    return {"object": "list", "data": items, "has_more": has_more}
