"""The package as an index shows it: license, metadata, extras, and a README that works there."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

import kling_async

ROOT = Path(kling_async.__file__).resolve().parent.parent
REPOSITORY = "https://github.com/kling-async/kling-async"


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomli")
    path = ROOT / "pyproject.toml"
    if not path.is_file():
        pytest.skip("not run from a source tree")
    loaded: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    return loaded


def test_the_mit_license_is_shipped(project: dict[str, Any]) -> None:
    """LICENSE is the MIT text, declared, and in the sdist (hatch puts it in the wheel)."""
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License\n")
    assert "MIT" == project["project"]["license"]
    assert ["LICENSE"] == project["project"]["license-files"]
    assert "LICENSE" in project["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]


def test_the_core_keeps_its_four_dependencies(project: dict[str, Any]) -> None:
    """aiohttp, anyio, attrs, cattrs; rich comes only with the `cli` extra."""
    names = [re.split(r"[<>=!~ \[]", dep)[0] for dep in project["project"]["dependencies"]]
    extras = project["project"]["optional-dependencies"]

    assert ["aiohttp", "anyio", "attrs", "cattrs"] == sorted(names)
    assert ["rich>=13"] == extras["cli"]
    assert {"kling_async[cli]", "mypy>=1.10"} <= set(extras["test"])


def test_metadata_names_the_python_versions_and_the_project_urls(
    project: dict[str, Any],
) -> None:
    """Python 3.10 to 3.13, asyncio only, and where the docs, changelog and source live."""
    meta = project["project"]
    versions = sorted(c for c in meta["classifiers"] if re.fullmatch(r".*:: 3\.\d+", c))

    assert [f"Programming Language :: Python :: 3.{n}" for n in (10, 11, 12, 13)] == versions
    assert "Framework :: AnyIO" not in meta["classifiers"]
    assert {"Documentation", "Changelog", "Source"} <= set(meta["urls"])
    assert all(url.startswith(REPOSITORY) for url in meta["urls"].values())
    assert "kling_async._cli:main" == meta["scripts"]["kling-async"]


def test_the_readme_works_on_a_package_index() -> None:
    """Every link in README.md is absolute (an index page has no docs/ next to it)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)

    assert targets
    assert [] == [target for target in targets if not target.startswith("https://")]


def test_the_readme_has_two_set_up_commands_and_ci_runs_the_second() -> None:
    """One installs and runs the demo; one installs the test extras and runs the tests."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    set_up = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", set_up, re.S)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]

    assert 2 == len(commands)
    assert "python -m kling_async demo" in commands[0]
    assert ci == commands[1]


def test_every_version_string_agrees(project: dict[str, Any]) -> None:
    """`__version__`, pyproject, the installed metadata, the User-Agent and `--version` say
    one version (reinstall with `pip install -e .` after changing it)."""
    import importlib.metadata
    import subprocess

    from kling_async._aiohttp_transport import USER_AGENT

    version = kling_async.__version__
    shown = subprocess.run(
        [sys.executable, "-m", "kling_async", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    ).stdout

    assert "0.2.0" == version
    assert version == project["project"]["version"]
    assert version == importlib.metadata.version("kling_async")
    assert USER_AGENT.startswith(f"kling_async/{version} aiohttp/")
    assert f"kling-async {version}\n" == shown
