"""Small HTML pieces the admin pages share: status badges, progress bars, compact ids, human durations.

The classes are styled by apps/monitoring/static/aihub/admin.css (loaded by admin/base_site.html).
"""
from __future__ import annotations

from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.html import format_html

# A status's tone: one colour per meaning across every model (jobs, files, requests, keys).
TONES = {
    "succeeded": "ok", "processed": "ok", "active": "ok",
    "running": "live", "queued": "muted", "validating_files": "muted", "uploaded": "muted",
    "failed": "bad", "error": "bad", "revoked": "bad",
    "cancelled": "warn", "expired": "warn",
}


def badge(status: str, *, title: str = "") -> str:
    return format_html('<span class="aihub-badge {}" title="{}">{}</span>', TONES.get(status, "muted"), title,
                       status.replace("_", " "))


def progress_bar(done: int, total: int) -> str:
    if not total:
        return "—"
    percent = min(100.0, 100.0 * done / total)
    return format_html('<span class="aihub-bar" title="{} of {} steps"><span style="width: {}%"></span></span>'
                       '<span class="aihub-bar-label">{} / {}</span>', done, total, f"{percent:.1f}", done, total)


def compact_id(value, *, prefix: str = "") -> str:
    """The first 8 hex digits of a uuid, the full public id in the title (hover) for copying."""
    full = f"{prefix}{value.hex}" if prefix else str(value)
    return format_html('<span class="aihub-mono" title="{}">{}</span>', full, value.hex[:8])


def human_bytes(count: int | None) -> str:
    return filesizeformat(count) if count else "—"


def human_duration(seconds: float | None) -> str:
    """'42 s', '3 min 20 s', '2 h 05 min'; a dash when unknown."""
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def short_time(moment) -> str:
    """'2026-11-29 10:49' (the current time zone), seconds in the title: narrower than Django's default."""
    if moment is None:
        return "—"
    local = timezone.localtime(moment)
    return format_html('<span class="aihub-mono" title="{}">{}</span>', local.isoformat(timespec="seconds"),
                       local.strftime("%Y-%m-%d %H:%M"))


def shortened(text: str, limit: int = 60) -> str:
    """At most `limit` characters on the page, the whole text in the title."""
    if len(text) <= limit:
        return text
    return format_html('<span title="{}">{}…</span>', text, text[:limit - 1])
