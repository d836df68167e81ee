"""Does a model's chat template know tools, and in which format does the model write its calls?

Read once when a model is registered (the catalog shows it as `tool_calling` and `tool_parser`), and by
the worker from the tokenizer it loaded (workers/tool_prompt.py), through the same function, so both
always agree. No torch here: the web process reads the template from the model directory's files.

- `native`: the template uses the `tools` variable; the prompt is the template's own rendering of the
  tools (`apply_chat_template(tools=...)`), and the parser follows the format the template teaches.
- `generic`: the template ignores tools (SmolLM2's, for one); the hub describes the tools in a system
  message of its own and parses its documented `<tool_call>` format (docs/api.md, "Tool calling").
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

NATIVE, GENERIC = "native", "generic"


def template_text(chat_template) -> str:
    """One template's text: transformers keeps named templates as a dict (or a list in tokenizer_config.json);
    the `tool_use` one is what it renders when tools are given."""
    if isinstance(chat_template, list):
        chat_template = {item.get("name"): item.get("template") for item in chat_template if isinstance(item, dict)}
    if isinstance(chat_template, dict):
        chat_template = chat_template.get("tool_use") or chat_template.get("default") or ""
    return chat_template if isinstance(chat_template, str) else ""


@functools.lru_cache(maxsize=64)  # the worker asks for every request with tools; templates are few
def _uses_tools(template: str) -> bool:
    try:
        from jinja2 import Environment, meta

        return "tools" in meta.find_undeclared_variables(Environment().parse(template))
    except Exception:  # noqa: BLE001 - a template jinja2 cannot parse here (transformers adds extensions)
        return re.search(r"\btools\b", template) is not None


def tool_support(chat_template) -> dict:
    """{"tool_calling": native|generic, "tool_parser": hermes|llama3|mistral|generic}."""
    template = template_text(chat_template)
    if not template or not _uses_tools(template):
        return {"tool_calling": GENERIC, "tool_parser": "generic"}
    if "[TOOL_CALLS]" in template or "[AVAILABLE_TOOLS]" in template:
        parser = "mistral"
    elif "<tool_call>" in template:
        parser = "hermes"
    elif "<|python_tag|>" in template or "ipython" in template:
        parser = "llama3"
    else:
        parser = "hermes"  # the most common format among tool-trained open models
    return {"tool_calling": NATIVE, "tool_parser": parser}


def directory_chat_template(path: Path):
    """The chat template a transformers model directory ships: chat_template.jinja, or tokenizer_config.json's."""
    path = Path(path)
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = path / "tokenizer_config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text()).get("chat_template")
        except ValueError:
            return None
    return None
