"""The rule every benchmark here follows: print each figure beside its target, record the
run, and exit 1 when any target is missed (0 when all are met).

    report = Report("cycle-1", settings={"cycles": 500}, record=True)
    report.check("CPU per request against raw aiohttp", 1.18, 1.25, unit="x")
    report.figure("raw aiohttp, CPU per request", 310.6, unit="us")
    sys.exit(report.finish())

``finish()`` writes ``bench/results/<name>.json`` (when ``record``): the figures the docs'
"Measured" tables are generated from by ``python bench/tables.py``. A run records only with
its default settings unless ``--record`` is given, so a quick run does not replace the
figures of a full one.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
from pathlib import Path
from typing import Any, Literal

RESULTS = Path(__file__).with_name("results")
Better = Literal["lower", "higher"]


def check(name: str, measured: float, target: float, *, better: Better = "lower") -> bool:
    """Whether ``measured`` meets ``target`` (at most it, or at least it); NaN never does."""
    if math.isnan(measured):
        return False
    return measured <= target if better == "lower" else measured >= target


class Report:
    """The checks and figures of one benchmark run, printed as they come."""

    def __init__(self, name: str, *, settings: dict[str, Any], record: bool) -> None:
        self.name = name
        self.settings = settings
        self.record = record
        self.checks: list[dict[str, Any]] = []
        self.figures: dict[str, Any] = {}

    def check(
        self,
        name: str,
        measured: float,
        target: float,
        *,
        better: Better = "lower",
        unit: str = "",
        digits: int = 3,
        note: str = "",
    ) -> bool:
        """Print ``name: measured (target <= t) met|MISSED`` and remember it; True when met."""
        ok = check(name, measured, target, better=better)
        sign = "<=" if better == "lower" else ">="
        self.verdict(
            name,
            ok,
            shown=f"{measured:.{digits}f}{unit}",
            target=f"{sign} {target:g}{unit}",
            measured=measured,
            note=note,
        )
        return ok

    def verdict(
        self,
        name: str,
        ok: bool | None,
        *,
        shown: str,
        target: str,
        measured: float | None = None,
        note: str = "",
    ) -> None:
        """Print and remember a figure checked elsewhere; ``ok=None``: could not be judged."""
        self.checks.append(
            {"name": name, "measured": measured, "shown": shown, "target": target, "ok": ok}
        )
        verdict = "n/a" if ok is None else ("met" if ok else "MISSED")
        extra = f"  ({note})" if note else ""
        print(f"{name:<52} {shown:>12}  target {target:<12} {verdict}{extra}")

    def figure(self, name: str, value: Any) -> None:
        """Keep a figure without a target (shown in the docs' tables, never checked)."""
        self.figures[name] = value

    @property
    def missed(self) -> list[str]:
        return [row["name"] for row in self.checks if row["ok"] is False]

    def finish(self) -> int:
        """Record the run (when asked), print the verdict; the exit status: 1 if any missed."""
        if self.record:
            RESULTS.mkdir(exist_ok=True)
            document = {
                "bench": self.name,
                "date": dt.date.today().isoformat(),
                "python": platform.python_version(),
                "settings": self.settings,
                "checks": self.checks,
                "figures": self.figures,
            }
            path = RESULTS / f"{self.name}.json"
            path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
            print(f"recorded in {path.relative_to(RESULTS.parent.parent)}")
        missed = self.missed
        if missed:
            print(f"MISSED {len(missed)} of {len(self.checks)} targets: {', '.join(missed)}")
            return 1
        print(f"all {len(self.checks)} targets met")
        return 0
