"""`manage.py runhub`: embedded services, migrations, the default model, web, workers, Flower."""
import logging
import os
import secrets
import sys

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import connections

import celeryconfig
from aihub_project.embedded import EmbeddedPostgres, EmbeddedValkey
from aihub_project.private_files import read_secret, write_private_file
from apps.catalog.models import ModelEntry
from apps.core.launcher import celery_worker, web_server
from apps.core.runstate import LeftoverError
from apps.core.supervisor import StopHub, Supervisor, stop_signals

logger = logging.getLogger("aihub.launcher")


class Command(BaseCommand):
    help = "Run the whole hub in the foreground; Ctrl-C or SIGTERM stops every process it started."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("AIHUB_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("AIHUB_PORT", "8000")))
        parser.add_argument("--flower-port", type=int, default=int(os.environ.get("AIHUB_FLOWER_PORT", "5555")))
        parser.add_argument("--no-flower", action="store_true")

    def handle(self, *args, host, port, flower_port, no_flower, **options):
        supervisor = Supervisor(state_file=settings.AIHUB_VAR_DIR / "runhub.json",
                                stop_timeout=settings.AIHUB_STOP_TIMEOUT_SECONDS,
                                restarts_per_minute=settings.AIHUB_RESTARTS_PER_MINUTE)
        stop_signals.install()
        code = 1
        try:
            for line in supervisor.stop_leftovers():
                self.stderr.write(self.style.WARNING(line.capitalize()))
            self._start_embedded_services(supervisor)
            self._prepare()
            self._start_processes(supervisor, host, port, flower_port, not no_flower)
            self.stdout.write(self.style.SUCCESS(
                f"AI Hub is up: http://{host}:{port}/api/v1 (docs at /docs, admin at /admin/)"
                + ("" if no_flower else f", Flower at http://{host}:{flower_port}/") + ". Ctrl-C stops it."))
            code = supervisor.run_forever()
        except StopHub:
            code = 130
        except LeftoverError as exc:
            self.stderr.write(self.style.ERROR(str(exc)))
        finally:
            # stop_all makes every later signal harmless; one landing just before it began is caught here
            # and stop_all (idempotent) runs again, so no path leaves children or servers running.
            while True:
                try:
                    supervisor.stop_all()
                    break
                except StopHub:
                    continue
        sys.exit(code)

    def _start_embedded_services(self, supervisor: Supervisor) -> None:
        var = settings.AIHUB_VAR_DIR
        if "DATABASE_URL" not in os.environ:
            pg = EmbeddedPostgres(var / "pgdata", settings.AIHUB_EMBEDDED_PG_PORT, var / "log" / "postgres.log")
            self.stdout.write(f"Starting embedded PostgreSQL on 127.0.0.1:{pg.port} (data in {pg.data_dir})")
            supervisor.add_server(pg)
            pg.start()
            # settings.py read the password file when Django started; on the very first run it did not exist yet.
            connections["default"].settings_dict["PASSWORD"] = pg.password
            connections["default"].close()
        if "REDIS_URL" not in os.environ:
            valkey = EmbeddedValkey(var / "valkey", settings.AIHUB_EMBEDDED_REDIS_PORT, var / "log" / "valkey.log")
            self.stdout.write(f"Starting embedded Valkey on 127.0.0.1:{valkey.port}")
            supervisor.add_server(valkey)
            valkey.start()

    def _prepare(self):
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("Database migrated.")
        for default in (settings.AIHUB_DEFAULT_MODEL, settings.AIHUB_DEFAULT_EMBEDDING_MODEL,
                        settings.AIHUB_DEFAULT_TRANSCRIPTION_MODEL, settings.AIHUB_DEFAULT_SPEECH_MODEL):
            self._ensure_default_model(default)
        self._ensure_admin()

    def _ensure_default_model(self, default: str) -> None:
        if ModelEntry.objects.filter(id=default).exists():
            return
        from apps.catalog.builtin import BUILTIN_MODELS

        if default in BUILTIN_MODELS:
            self.stdout.write(f"Preparing the default model {default} (once)...")
            call_command("importmodel", builtin=default)
        else:
            self.stderr.write(f"The default model {default} is not in the catalog; register it with importmodel.")

    def _ensure_admin(self):
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            return
        username = os.environ.get("AIHUB_ADMIN_USERNAME", "admin")
        password = os.environ.get("AIHUB_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, password=password, email="")
        credentials = settings.AIHUB_VAR_DIR / "admin-credentials.txt"
        write_private_file(credentials, f"{username}\n{password}\n")
        self.stdout.write(self.style.WARNING(
            f"Created admin user '{username}' with password '{password}' (also in {credentials})."))

    def _start_processes(self, supervisor, host, port, flower_port, flower):
        python = sys.executable
        supervisor.start("web", web_server(host, port))
        supervisor.start("inference worker", celery_worker("inference", celeryconfig.INFERENCE_QUEUE))
        supervisor.start("training worker", celery_worker("training", celeryconfig.TRAINING_QUEUE))
        supervisor.start("default worker", celery_worker("default", celeryconfig.DEFAULT_QUEUE, 2, beat=True))
        if flower:
            supervisor.start("flower", [python, "-m", "celery", "-A", "aihub_project", "flower",
                                        f"--port={flower_port}", f"--address={host}"],
                             env={**os.environ, "FLOWER_BASIC_AUTH": self._flower_credentials(),
                                  "FLOWER_READ_ONLY": str(settings.AIHUB_FLOWER_READ_ONLY).lower()})

    def _flower_credentials(self) -> str:
        """Flower sees every task's arguments: it always runs behind basic auth."""
        credentials = os.environ.get("AIHUB_FLOWER_BASIC_AUTH")
        if credentials:
            return credentials
        stored = settings.AIHUB_VAR_DIR / "flower-credentials.txt"
        credentials = read_secret(stored)
        if not credentials:
            credentials = f"admin:{secrets.token_urlsafe(12)}"
            write_private_file(stored, credentials + "\n")
        self.stdout.write(f"Flower login: {credentials} (from {stored}; set AIHUB_FLOWER_BASIC_AUTH to choose)")
        return credentials
