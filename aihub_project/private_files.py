"""Files only their owner may read (passwords, credentials), private from the moment they exist.

Write-then-chmod leaves a window in which the file has the umask's mode
(often world-readable); these helpers create a new file with mode 0600 in the
open call itself (O_EXCL, so never an existing file someone else prepared)
and move it into place, which is atomic: readers see the old file or the new one.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private_file(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_secret(path: Path) -> str | None:
    """The first line of `path`, or None when the file is absent or not ours to read."""
    try:
        return Path(path).read_text().strip() or None
    except (FileNotFoundError, PermissionError):
        return None


def read_or_create_secret(path: Path) -> str:
    """A generated password kept in `path`: made once, the same on every later call."""
    existing = read_secret(path)
    if existing:
        return existing
    write_private_file(path, secrets.token_urlsafe(24) + "\n")
    return read_secret(path)
