"""`make run` installs requirements/cpu.txt (with base.txt) and models.txt, no dev tools: every third-party
module the hub's own code imports must come from those pins or from what they depend on.

A module that arrived only through another package's dependencies breaks a fresh install when that package
changes them: httpx came through huggingface-hub until its newer releases moved to httpx2, and `make run`
failed on a fresh machine while the tests, with the dev requirements, passed.
"""
import ast
import importlib.metadata as metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
OURS = {"apps", "workers", "aihub_project", "celeryconfig", "manage"}
# Modules of GPU-only distributions, not installed on this machine (so not in packages_distributions()).
GPU_ONLY = {"pynvml": ["nvidia-ml-py"]}
RUNTIME_CODE = [ROOT / "apps", ROOT / "workers", ROOT / "aihub_project", ROOT / "celeryconfig.py", ROOT / "manage.py"]


def _pins(path: Path) -> list[Requirement]:
    """The requirements of a file, following `-r` includes."""
    pins = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            pins += _pins(path.parent / line[3:].strip())
        elif line and not line.startswith("-"):
            pins.append(Requirement(line))
    return pins


def _installed_by(pins: list[Requirement], *, follow: bool) -> set[str]:
    """Distribution names the pins install: themselves and, with `follow`, everything they depend on."""
    found, queue = set(), [(pin.name, set(pin.extras)) for pin in pins]
    while queue:
        name, extras = queue.pop()
        key = canonicalize_name(name)
        if key in found:
            continue
        found.add(key)
        if not follow:
            continue
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": extra})
                                                 for extra in extras | {""}):
                queue.append((requirement.name, set(requirement.extras)))
    return found


def _required_imports(path: Path) -> set[str]:
    """Top-level modules a file imports, leaving out those imported under `except ImportError` (optional)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError")
                for handler in node.handlers):
            optional |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_module_the_hub_imports_is_installed_by_its_runtime_requirements():
    requirements = ROOT / "requirements"
    installed = (_installed_by(_pins(requirements / "cpu.txt") + _pins(requirements / "gpu.txt"), follow=True)
                 | _installed_by(_pins(requirements / "models.txt"), follow=False))  # installed with --no-deps
    providers = {**GPU_ONLY, **metadata.packages_distributions()}
    files = [file for place in RUNTIME_CODE for file in ([place] if place.is_file() else place.rglob("*.py"))]
    missing = []
    for file in files:
        for module in sorted(_required_imports(file) - OURS - set(sys.stdlib_module_names)):
            dists = {canonicalize_name(dist) for dist in providers.get(module, [])}
            if not dists & installed:
                source = sorted(dists) or "nothing installed"
                missing.append(f"{file.relative_to(ROOT)} imports {module} (from {source})")
    assert not missing, "not installed by requirements/cpu.txt, gpu.txt or models.txt:\n" + "\n".join(missing)
