"""Fine-tuning on the training worker: LoRA on a full-precision base, QLoRA on a 4-bit (nf4) base.

A plain PyTorch loop around peft rather than transformers' Trainer: it owns
checkpoints (adapter + optimizer + scheduler + position), cooperative cancel
between steps, progress events per optimizer step, and exact resume after a
crash. The job row is the source of truth; a Redis lock renewed while training
makes sure a job never runs twice at once (docs/training.md).
"""
from __future__ import annotations

import logging
import math
import random
import shutil
import threading
import time
from pathlib import Path

import torch
from django.conf import settings
from django.utils import timezone

import celeryconfig
from apps.catalog.models import ModelEntry, ModelKind
from apps.catalog.services import model_register
from apps.core import events
from apps.core.errors import AppError
from apps.core.publishing import send_task
from apps.core.redis import sync_client
from apps.core.worker_commands import command_sync
from apps.training.datasets import load_examples
from apps.training.models import TrainingCheckpoint, TrainingJob
from apps.training.services import job_error, job_event, job_finish
from apps.training.storage import checkpoint_quota_refusal, checkpoints_prune, directory_bytes, training_run_dir

from .sweeper import training_lock_key as lock_key

logger = logging.getLogger(__name__)
Status = TrainingJob.Status
LOCK_SECONDS = 15


class Cancelled(Exception):
    pass


class WaitForMemory(Exception):
    """Not enough room on the device even after the inference side unloaded its idle models."""


TRAINING_OVERHEAD = 1.5  # adapter gradients and optimizer state, activations of a batch


class JobLock:
    """Held while a worker trains a job; renewed in the background, gone within LOCK_SECONDS of a crash."""

    def __init__(self, job_id, owner: str):
        self.key, self.owner = lock_key(job_id), owner
        self._stop = threading.Event()

    def acquire(self) -> bool:
        if not sync_client().set(self.key, self.owner, nx=True, ex=LOCK_SECONDS):
            return False
        threading.Thread(target=self._renew, daemon=True).start()
        return True

    def _renew(self):
        while not self._stop.wait(LOCK_SECONDS / 3):
            sync_client().set(self.key, self.owner, xx=True, ex=LOCK_SECONDS)

    def release(self):
        self._stop.set()
        if sync_client().get(self.key) == self.owner:
            sync_client().delete(self.key)


def run_training_job(job_id: str, *, worker: str) -> None:
    lock = JobLock(job_id, worker)
    if not lock.acquire():
        # Either another worker trains it now, or its worker just died and the lock has not expired yet
        # (a redelivered message after kill -9). Look again once the lock would have expired.
        if TrainingJob.objects.filter(id=job_id, status=Status.RUNNING).exists():
            logger.info("job %s is locked; checking again in %ds", job_id, LOCK_SECONDS)
            send_task(celeryconfig.TRAIN_TASK, args=[job_id], countdown=LOCK_SECONDS + 1)
        return
    try:
        job = _claim(job_id, worker)
        if job is not None:
            _train_or_fail(job)
    finally:
        lock.release()


def _claim(job_id: str, worker: str) -> TrainingJob | None:
    """queued -> running; or take over a running job whose worker died (we hold its lock now)."""
    now = timezone.now()
    job = TrainingJob.objects.filter(id=job_id).first()
    if job is None or job.status not in (Status.QUEUED, Status.RUNNING):
        return None
    if job.attempts >= settings.AIHUB_TRAINING_MAX_ATTEMPTS:
        job_finish(job, Status.FAILED, from_states=[Status.QUEUED, Status.RUNNING],
                   message="The job failed after repeated worker crashes.",
                   error=job_error(code="too_many_attempts", message=f"Stopped after {job.attempts} attempts."))
        return None
    claimed = TrainingJob.objects.filter(id=job_id, status=job.status, attempts=job.attempts).update(
        status=Status.RUNNING, attempts=job.attempts + 1, worker=worker, started_at=job.started_at or now,
        status_reason="")
    if not claimed:
        return None
    job.refresh_from_db()
    resumed = job.attempts > 1
    job_event(job, f"Training {'resumed' if resumed else 'started'} on {worker} (attempt {job.attempts}).")
    return job


def _train_or_fail(job: TrainingJob) -> None:
    trainer = None
    try:
        trainer = Trainer(job)
        trainer.run()
    except WaitForMemory as reason:
        # Back to the queue, without spending an attempt; the message comes back later.
        if TrainingJob.objects.filter(id=job.id, status=Status.RUNNING).update(
                status=Status.QUEUED, status_reason=str(reason), attempts=job.attempts - 1):
            job.status = Status.QUEUED
            job_event(job, f"Waiting: {reason}")
            send_task(celeryconfig.TRAIN_TASK, args=[str(job.id)],
                      countdown=settings.AIHUB_TRAINING_MEMORY_RETRY_SECONDS)
    except Cancelled:
        job_finish(job, Status.CANCELLED, from_states=[Status.RUNNING], message="The job was cancelled.")
    except Exception as exc:  # noqa: BLE001 - the job must end with its reason
        logger.exception("training job %s failed", job.id)
        job_finish(job, Status.FAILED, from_states=[Status.RUNNING], message=f"Training failed: {exc}",
                   error=job_error(code="training_failed", message=str(exc)[:500]))
    finally:
        if trainer is not None:
            # Its stop flags are no longer asked for. Closed here, not left to the garbage collector: a trainer
            # sits in reference cycles (the model, its callbacks) that the collector may not free for a long time.
            trainer.stop.close()


class Trainer:
    def __init__(self, job: TrainingJob):
        self.job = job
        self.hp = job.hyperparameters
        self.base = ModelEntry.objects.get(id=job.base_model)
        self.device = _device()
        self.run_dir = training_run_dir(job)
        self.stop = events.StopSignal(job.id)

    # -- data -----------------------------------------------------------

    def _examples(self) -> list[dict]:
        path = self.job.training_file.path if self.job.training_file_id else self.job.dataset_path
        limit = self.hp["max_seq_length"]
        encoded = []
        for messages in load_examples(Path(path)):
            full = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
            prompt = self.tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True,
                                                        return_dict=True)["input_ids"]
            full = full[:limit]
            labels = [-100] * min(len(prompt), len(full)) + full[len(prompt):]  # learn the answer only
            encoded.append({"input_ids": full, "labels": labels})
        return encoded

    def _batches(self, epoch: int) -> list[list[dict]]:
        order = list(range(len(self.examples)))
        random.Random(self.hp["seed"] + epoch).shuffle(order)  # the same order again after a resume
        size = self.hp["batch_size"]
        return [[self.examples[i] for i in order[start:start + size]] for start in range(0, len(order), size)]

    def _collate(self, batch: list[dict]) -> dict:
        width = max(len(item["input_ids"]) for item in batch)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):
            n = len(item["input_ids"])
            ids[row, :n] = torch.tensor(item["input_ids"])
            labels[row, :n] = torch.tensor(item["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids.to(self.device), "labels": labels.to(self.device),
                "attention_mask": mask.to(self.device)}

    # -- model ----------------------------------------------------------

    def _load(self):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.base.path)
        kwargs = {"dtype": torch.float32 if self.device.type == "cpu" else torch.bfloat16}
        if self.job.training_type == TrainingJob.Type.QLORA:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=kwargs["dtype"])
            kwargs["device_map"] = {"": self.device}
        model = AutoModelForCausalLM.from_pretrained(self.base.path, **kwargs)
        if self.job.training_type != TrainingJob.Type.QLORA:
            model = model.to(self.device)
        config = LoraConfig(r=self.hp["lora_r"], lora_alpha=self.hp["lora_alpha"],
                            lora_dropout=self.hp["lora_dropout"], task_type="CAUSAL_LM",
                            target_modules=self.hp["target_modules"] or "all-linear")
        self.model = get_peft_model(model, config)
        self.model.train()
        trainable, total = self.model.get_nb_trainable_parameters()
        precision = ("4-bit (nf4)" if self.job.training_type == TrainingJob.Type.QLORA
                     else str(kwargs["dtype"]).removeprefix("torch."))
        job_event(self.job, f"Base {self.base.id} loaded in {precision} on {self.device}; training "
                            f"{trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%).",
                  data={"precision": precision, "trainable_parameters": trainable, "total_parameters": total})

    # -- the loop -------------------------------------------------------

    def _reserve_memory(self) -> None:
        """Training shares the device with inference workers: fit beside their models, or make them unload idle ones.

        The budget is the device's (AIHUB_GPU_MEMORY_BUDGET); the inference
        workers on this host and device report what their models hold.
        """
        from apps.catalog.footprint import estimate_bytes
        from apps.catalog.worker_registry import live_workers

        from .memory import device_memory, resolve_budget

        quantization = "bnb-4bit" if self.job.training_type == TrainingJob.Type.QLORA else self.base.quantization
        need = int(TRAINING_OVERHEAD * estimate_bytes(
            parameter_count=self.base.parameter_count, quantisable_count=self.base.quantisable_parameter_count,
            dtype=self.base.dtype, quantization=quantization, device_type=self.device.type))
        budget = resolve_budget(settings.AIHUB_GPU_MEMORY_BUDGET, device_memory(self.device)["memory_total_bytes"])
        host = self.job.worker.split("@", 1)[-1].split(":", 1)[0]
        device = "cpu" if self.device.type == "cpu" else f"cuda:{self.device.index or 0}"
        neighbours = [w for w in live_workers() if w.hostname.split("@", 1)[-1] == host and w.device == device]
        held = sum(w.models_bytes for w in neighbours)
        if held + need <= budget:
            return
        unloaded, held = [], 0
        for worker in neighbours:
            reply = _control(worker, "unload_idle")
            unloaded += reply.get("models", []) if reply else []
            held += reply["models_bytes"] if reply else worker.models_bytes
        if unloaded:
            job_event(self.job, f"Inference unloaded idle models to make room: {', '.join(unloaded)}.")
        if held + need > budget:
            raise WaitForMemory(f"needs about {need / 2**20:.1f} MiB of device memory; "
                                f"{max(0, budget - held) / 2**20:.1f} MiB is free beside pinned or busy models")

    def run(self):
        torch.manual_seed(self.hp["seed"])
        self._reserve_memory()
        logger.info("job %s: %s on %s (%d torch threads)", self.job.id, self.job.training_type, self.device,
                    torch.get_num_threads())
        self._load()
        self.examples = self._examples()
        accumulation = self.hp["gradient_accumulation_steps"]
        steps_per_epoch = math.ceil(math.ceil(len(self.examples) / self.hp["batch_size"]) / accumulation)
        total_steps = steps_per_epoch * self.hp["num_epochs"]
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                      lr=self.hp["learning_rate"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / max(1, total_steps)))
        step, trained_tokens = self._resume(optimizer, scheduler)
        TrainingJob.objects.filter(id=self.job.id).update(total_steps=total_steps)
        checkpoint_every = self.hp.get("checkpoint_every") or settings.AIHUB_TRAINING_CHECKPOINT_STEPS
        started, tokens_since = time.perf_counter(), 0
        first_step = step
        for epoch in range(self.hp["num_epochs"]):
            batches = self._batches(epoch)
            for group_start in range(0, len(batches), accumulation):
                global_step = epoch * steps_per_epoch + group_start // accumulation
                if global_step < step:
                    continue  # done before the resume
                if self.stop():
                    raise Cancelled
                loss_total = 0.0
                group = batches[group_start:group_start + accumulation]
                for batch in group:
                    inputs = self._collate(batch)
                    loss = self.model(**inputs).loss / len(group)
                    loss.backward()
                    loss_total += loss.item()
                    tokens = int(inputs["attention_mask"].sum())
                    trained_tokens += tokens
                    tokens_since += tokens
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                elapsed = time.perf_counter() - started
                rate = (step - first_step) / elapsed if elapsed else 0
                self._progress(step=step, total=total_steps, epoch=epoch + (group_start + len(group)) / len(batches),
                               loss=loss_total, lr=scheduler.get_last_lr()[0], tokens_per_second=tokens_since / elapsed,
                               eta=(total_steps - step) / rate if rate else None, trained_tokens=trained_tokens)
                if step % checkpoint_every == 0 and step < total_steps:
                    self._checkpoint(step, optimizer, scheduler, trained_tokens, loss_total)
        self._finish(trained_tokens)

    def _progress(self, *, step, total, epoch, loss, lr, tokens_per_second, eta, trained_tokens):
        TrainingJob.objects.filter(id=self.job.id).update(
            step=step, epoch=round(epoch, 4), loss=loss, learning_rate=lr, tokens_per_second=tokens_per_second,
            eta_seconds=eta, trained_tokens=trained_tokens)
        job_event(self.job, f"Step {step}/{total}: training loss={loss:.4f}", type="metrics", data={
            "step": step, "total_steps": total, "epoch": round(epoch, 4), "train_loss": loss,
            "learning_rate": lr, "tokens_per_second": round(tokens_per_second, 1),
            "eta_seconds": round(eta, 1) if eta is not None else None})

    def _checkpoint_bytes(self) -> int:
        """The size of the next checkpoint: the last one's, or the adapter plus AdamW's two moments per weight."""
        last = self.job.checkpoints.order_by("-step").first()
        if last is not None and last.bytes:
            return last.bytes
        return 3 * sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad)

    def _checkpoint(self, step, optimizer, scheduler, trained_tokens, loss):
        # Over the owner's storage quota, training goes on without this checkpoint (a crash then resumes
        # from an older one, or from the start): losing the run to a full quota would be worse.
        refusal = checkpoint_quota_refusal(job=self.job, adding=self._checkpoint_bytes())
        if refusal:
            job_event(self.job, f"Checkpoint at step {step} skipped: {refusal}"[:500], level="warning",
                      data={"step": step, "code": "storage_quota_exceeded"})
            return
        directory = self.run_dir / f"step-{step}"
        partial = directory.with_name(directory.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        self.model.save_pretrained(partial)
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "trained_tokens": trained_tokens, "torch_rng": torch.get_rng_state()}, partial / "state.pt")
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)  # a crash mid-save never leaves a half checkpoint
        TrainingCheckpoint.objects.update_or_create(job=self.job, step=step, defaults={
            "path": str(directory), "bytes": directory_bytes(directory),
            "metrics": {"step": step, "train_loss": loss}})
        checkpoints_prune(job=self.job)  # after the new one is safe, so a crash never leaves none
        job_event(self.job, f"Checkpoint saved at step {step}.", data={"step": step})

    def _resume(self, optimizer, scheduler) -> tuple[int, int]:
        checkpoint = self.job.checkpoints.order_by("-step").first()
        if checkpoint is None or not Path(checkpoint.path, "state.pt").is_file():
            return 0, 0
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(Path(checkpoint.path) / "adapter_model.safetensors"))
        # weights_only: tensors, numbers and dicts only (the optimizer, scheduler and RNG states are just that);
        # unpickling arbitrary objects from a file on disk would run whatever code it names.
        state = torch.load(Path(checkpoint.path) / "state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        job_event(self.job, f"Resuming from the checkpoint at step {state['step']}.", data={"step": state["step"]})
        return state["step"], state["trained_tokens"]

    def _finish(self, trained_tokens: int):
        adapter_dir = Path(settings.AIHUB_MODEL_STORE) / "adapters" / self.job.id.hex
        shutil.rmtree(adapter_dir, ignore_errors=True)
        self.model.save_pretrained(adapter_dir)
        model_id = self.job.planned_model_id
        # Private to the job's user from its first moment (docs/models.md: ownership).
        model_register(model_id=model_id, path=Path(self.base.path), kind=self.base.kind or ModelKind.CHAT,
                       context_length=self.base.context_length, dtype=self.base.dtype,
                       quantization=self.base.quantization, owner=self.job.user, base_model=self.base.id,
                       adapter_path=str(adapter_dir))
        job_finish(self.job, Status.SUCCEEDED, from_states=[Status.RUNNING],
                   message=f"The job succeeded: {model_id} is ready.", fine_tuned_model=model_id,
                   trained_tokens=trained_tokens)


def _control(worker, action: str) -> dict | None:
    """The worker's reply, or None when it refused or did not answer (the job then plans with its last beat)."""
    try:
        return command_sync(action, queue=worker.control_queue, timeout=60)
    except AppError:
        return None


def _device() -> torch.device:
    from .engine import pick_device

    return pick_device(settings.AIHUB_DEVICE)
