"""What every benchmark needs first: embedded services, a migrated database, the default model."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@contextmanager
def django_on_embedded_services():
    """Yields the run directory; Django is set up on fresh embedded PostgreSQL and Valkey."""
    from tests.support.processes import start_services

    run_dir = Path(tempfile.mkdtemp(prefix="aihub-bench-"))
    servers, env = start_services(run_dir)
    os.environ.update(env)
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)
        call_command("importmodel", builtin="smollm2:135m", verbosity=0)
        yield run_dir
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
