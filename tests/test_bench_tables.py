"""The docs' "Measured" tables are exactly what the benchmarks recorded last."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import kling_async

ROOT = Path(kling_async.__file__).resolve().parent.parent


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_tables_match_the_recorded_results() -> None:
    """Each `<!-- bench:NAME -->` block equals its table from bench/results (bench/tables.py)."""
    tables = load("tables")
    for page in tables.PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        assert "<!-- bench:" in text, page
        assert tables.render(text) == text, f"{page}: run python bench/tables.py"


def test_every_recorded_benchmark_has_a_table() -> None:
    """A results file nobody shows is a figure the docs forgot."""
    tables = load("tables")
    shown = "".join((ROOT / page).read_text(encoding="utf-8") for page in tables.PAGES)
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        block = path.stem.partition("-")[0]
        assert f"<!-- bench:{block} -->" in shown, path.name


def test_a_missed_target_makes_the_exit_status_1(tmp_path: Path) -> None:
    """The benchmarks' shared rule: any missed target gives exit status 1, none gives 0."""
    targets = load("_targets")
    met = targets.Report("x", settings={}, record=False)
    met.check("lower is better", 1.2, 1.25)
    met.check("higher is better", 3.0, 2.0, better="higher")
    missed = targets.Report("x", settings={}, record=False)
    missed.check("met", 1.0, 1.25)
    missed.check("missed", 1.26, 1.25, unit="x")
    assert (0, 1) == (met.finish(), missed.finish())
    assert ["missed"] == missed.missed
    assert not targets.check("NaN never meets a target", float("nan"), 1.0)
