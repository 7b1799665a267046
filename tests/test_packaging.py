"""The repository's promises about installation: pyproject, environment.yml, presets, README."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PYPI = {"pytorch": "torch"}  # conda's name for the same package


def _name(requirement: str) -> str:
    """'torch>=2.2,<3' -> 'torch'; "tomli>=2; python_version < '3.11'" -> 'tomli'."""
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _environment_packages() -> tuple[set[str], set[str]]:
    """(conda packages, pip packages) named in environment.yml, without python, pip and -e."""
    conda, pip, in_pip, in_dependencies = set(), set(), False, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if stripped and not stripped.startswith(" "):  # a top-level key: name, channels, ...
            in_dependencies = stripped.startswith("dependencies:")
            continue
        if not in_dependencies or not stripped.strip().startswith("- "):
            continue
        item = stripped.strip()[2:].strip()
        indent = len(stripped) - len(stripped.lstrip())
        if item == "pip:":
            in_pip = True
            continue
        if in_pip and indent <= 2:
            in_pip = False
        if item.startswith("-e") or _name(item) in ("python", "pip"):
            continue
        name = _name(item)
        (pip if in_pip else conda).add(CONDA_TO_PYPI.get(name, name))
    return conda, pip


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = _pyproject()["project"]
    required = {_name(r) for r in project["dependencies"] if "python_version" not in r}
    required |= {_name(r) for r in project["optional-dependencies"]["dev"]}
    conda, pip = _environment_packages()
    assert conda | pip == required, (
        f"only in environment.yml: {sorted((conda | pip) - required)}; "
        f"only in pyproject.toml: {sorted(required - (conda | pip))}"
    )
    assert not conda & pip, f"listed twice: {sorted(conda & pip)}"
    assert "-e .[dev]" in (ROOT / "environment.yml").read_text()


def test_torch_requirement_is_a_range_that_admits_2_13():
    torch_req = next(r for r in _pyproject()["project"]["dependencies"] if _name(r) == "torch")
    assert "==" not in torch_req, "users need a range, not a pin"
    lower = re.search(r">=\s*([\d.]+)", torch_req).group(1)
    upper = re.search(r"<\s*([\d.]+)", torch_req).group(1)
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(lower) <= (2, 13) < as_tuple(upper)


def test_console_script_points_at_a_callable():
    target = _pyproject()["project"]["scripts"]["minigpt"]
    module, _, function = target.partition(":")
    imported = __import__(module, fromlist=[function])
    assert callable(getattr(imported, function))


def test_presets_ship_inside_the_package():
    from minigpt.config import load_preset, preset_names

    on_disk = {p.stem for p in (ROOT / "configs").glob("*.toml")}
    assert {"tiny", "shakespeare-char", "gpt2-124m"} <= on_disk
    assert set(preset_names()) == on_disk
    assert load_preset("tiny")["dataset"] == "stdlib"


def test_readme_quickstart_is_install_run_test_and_ci_runs_the_same_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```(?:bash|sh)?\n(.*?)```", readme, re.S)
    assert block, "README needs a Quickstart section with a code block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    commands = [c for c in commands if c]
    # PyTorch's CPU build may come first, so that pip does not pull the CUDA build
    torch_step = [c for c in commands[:-3] if c.startswith("pip install torch")]
    assert commands[:-3] == torch_step and len(commands) in (3, 4), (
        f"quickstart should be [torch,] install, run, test; got {commands}")
    assert commands[-3].startswith("pip install") and "-e" in commands[-3]
    test_command = commands[-1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert any(line.strip() == test_command for line in ci.splitlines()), (
        f"CI must run the README's test command {test_command!r}"
    )


@pytest.mark.parametrize("path", ["LICENSE", "README.md", "environment.yml", ".ci/run"])
def test_project_files_exist(path):
    assert (ROOT / path).is_file()


def test_readme_and_the_package_docstring_name_every_module():
    import minigpt

    modules = sorted(p.stem for p in (ROOT / "minigpt").glob("*.py")
                     if p.stem not in ("__init__", "__main__"))
    readme = (ROOT / "README.md").read_text()
    docstring = minigpt.__doc__
    missing_readme = [m for m in modules if f"`{m}`" not in readme and f"minigpt.{m}" not in readme]
    missing_doc = [m for m in modules if m not in docstring]
    assert not missing_readme, f"README.md never names {missing_readme}"
    assert not missing_doc, f"minigpt/__init__.py's docstring never names {missing_doc}"
