"""Small formats for the dashboard's figures (sizes use Django's own `filesizeformat`)."""
from django import template

register = template.Library()


@register.filter
def seconds(value) -> str:
    """A duration for people: `42 s`, `3 min 5 s`, `2 h 10 min`."""
    if value is None:
        return "—"
    total = int(round(float(value)))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60} s"
    return f"{total // 3600} h {total % 3600 // 60} min"


@register.filter
def milliseconds(value) -> str:
    return "—" if value is None else f"{float(value):,.0f} ms"


@register.filter
def css_percent(value) -> str:
    """A width for a bar: clamped to 0-100 and written with a dot whatever the locale."""
    return f"{min(100.0, max(0.0, float(value or 0))):.1f}%"
