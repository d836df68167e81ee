"""OpenAI's fine-tuning API (client.fine_tuning.jobs.*) through the official SDK, over the hub's training jobs."""
import openai
import pytest
from openai import OpenAI

from apps.training.models import TrainingJob
from tests.support.fine_tuning import SECRET, jsonl
from tests.support.fine_tuning import wait_for as _wait

FINAL = ("succeeded", "failed", "cancelled")


def _client(hub, account) -> OpenAI:
    return OpenAI(base_url=hub.api_url, api_key=account.raw_key, max_retries=0, timeout=120)


def _file(client, content: bytes) -> str:
    uploaded = client.files.create(file=("data.jsonl", content), purpose="fine-tune")
    assert uploaded.purpose == "fine-tune" and uploaded.id.startswith("file-")
    return uploaded.id


def _finished(client, job_id, timeout=180):
    return _wait(lambda: client.fine_tuning.jobs.retrieve(job_id), lambda job: job.status in FINAL, timeout=timeout)


def test_a_job_made_with_the_sdk_trains_and_reports_as_openai(hub, alice):
    client = _client(hub, alice)
    training_file = _file(client, jsonl(SECRET))
    assert _wait(lambda: client.files.retrieve(training_file), lambda f: f.status != "uploaded").status == "processed"
    job = client.fine_tuning.jobs.create(
        model="tiny:chat", training_file=training_file, suffix="sdk", seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4,
                                                                          "learning_rate_multiplier": "auto"}}},
        extra_body={"lora": {"lora_r": 4, "checkpoint_every": 1}})
    assert job.object == "fine_tuning.job" and job.id.startswith("ftjob-") and job.status == "validating_files"
    assert job.trained_tokens is None and job.fine_tuned_model is None
    job = _finished(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny:chat:sdk:{job.id.removeprefix('ftjob-')[:8]}"
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at and job.seed == 3
    assert job.training_file == training_file and job.model == "tiny:chat" and job.error is None
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size,
            job.hyperparameters.learning_rate_multiplier) == (2, 4, 1.0)
    assert job.model_extra["lora"]["lora_r"] == 4 and job.model_extra["lora"]["training_type"] == "lora"
    assert job.id in {listed.id for listed in client.fine_tuning.jobs.list()}

    events = client.fine_tuning.jobs.list_events(job.id, limit=100)
    assert events.data[0].message.startswith("The job succeeded")  # newest first, as OpenAI
    assert {event.object for event in events.data} == {"fine_tuning.job.event"}
    metrics = [event for event in events.data if event.type == "metrics"]
    assert [event.data["step"] for event in metrics] == [4, 3, 2, 1]
    first_page = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert first_page.has_more and [e.id for e in first_page.data] == [e.id for e in events.data[:2]]
    assert [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=2)] == [e.id for e in events.data]

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)  # the last step saves the model instead
    assert [c.step_number for c in checkpoints.data] == [3, 2, 1] and not checkpoints.has_more
    assert checkpoints.data[0].object == "fine_tuning.job.checkpoint"
    assert checkpoints.data[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-3"
    assert checkpoints.data[0].fine_tuning_job_id == job.id and checkpoints.data[0].metrics.train_loss > 0
    after = client.fine_tuning.jobs.checkpoints.list(job.id, limit=1, after=checkpoints.data[0].id)
    assert [c.step_number for c in after.data] == [2]
    # The same job through the hub's own path.
    assert TrainingJob.objects.get(id=job.id.removeprefix("ftjob-")).hyperparameters["lora_r"] == 4


def test_cancel_stops_a_job(hub, alice):
    client = _client(hub, alice)
    job = client.fine_tuning.jobs.create(model="tiny:chat", training_file=_file(client, jsonl(SECRET * 40)),
                                         hyperparameters={"batch_size": 1, "n_epochs": 1})
    answer = client.fine_tuning.jobs.cancel(job.id)
    assert answer.id == job.id
    job = _finished(client, job.id, timeout=60)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert "cancelled" in client.fine_tuning.jobs.list_events(job.id).data[0].message


def test_a_failed_job_reports_an_openai_error(hub, alice):
    client = _client(hub, alice)
    job = client.fine_tuning.jobs.create(model="tiny:chat", training_file=_file(client, b'{"instruction": 5}\n'))
    job = _finished(client, job.id)
    assert job.status == "failed"
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert job.error.message.startswith("line 1:")


def test_another_users_job_is_not_found_anywhere(hub, alice, bob):
    mine = _client(hub, alice)
    job = mine.fine_tuning.jobs.create(model="tiny:chat", training_file=_file(mine, b'{"instruction": 5}\n'))
    theirs = _client(hub, bob)
    for call in (lambda: theirs.fine_tuning.jobs.retrieve(job.id), lambda: theirs.fine_tuning.jobs.cancel(job.id),
                 lambda: theirs.fine_tuning.jobs.list_events(job.id),
                 lambda: theirs.fine_tuning.jobs.checkpoints.list(job.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert job.id not in {listed.id for listed in theirs.fine_tuning.jobs.list()}
    with pytest.raises(openai.NotFoundError):  # nor can anyone train on someone else's file
        theirs.fine_tuning.jobs.create(model="tiny:chat", training_file=job.training_file)
    _finished(mine, job.id)


def test_jobs_are_listed_newest_first_in_pages(hub, alice):
    client = _client(hub, alice)
    bad = _file(client, b'{"instruction": 5}\n')
    made = [client.fine_tuning.jobs.create(model="tiny:chat", training_file=bad).id for _ in range(3)]
    page = client.fine_tuning.jobs.list(limit=2)
    assert [job.id for job in page.data] == made[::-1][:2] and page.has_more
    rest = client.fine_tuning.jobs.list(limit=2, after=page.data[-1].id)
    assert [job.id for job in rest.data] == [made[0]] and not rest.has_more
    assert [job.id for job in client.fine_tuning.jobs.list(limit=2)] == made[::-1]  # the SDK follows the pages
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.list(metadata={"team": "a"})
    assert refused.value.body["code"] == "unsupported_parameter"
    for job_id in made:
        _finished(client, job_id)


@pytest.mark.parametrize("request_body, param", [
    ({"integrations": [{"type": "wandb", "wandb": {"project": "x"}}]}, "integrations"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}}, "method.dpo"),
    ({"method": {"type": "reinforcement"}}, "method.type"),
    ({"hyperparameters": {"beta": 0.1}}, "hyperparameters.beta"),
    ({"metadata": {"team": "a"}}, "metadata"),
    ({"extra_body": {"lora": {"rank": 4}}}, "lora.rank"),
])
def test_unimplemented_parameters_are_refused_by_name(hub, alice, request_body, param):
    client = _client(hub, alice)
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model="tiny:chat", training_file="file-0", **request_body)
    assert refused.value.body["code"] == "unsupported_parameter" and refused.value.body["param"] == param
    assert not TrainingJob.objects.filter(user=alice.user).exists()
