"""Write the docs' "Measured" tables from the figures the benchmarks recorded last.

Each benchmark run with its default settings records ``bench/results/<name>.json`` (see
``bench/_targets.py``). This script replaces what stands between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` in the docs by a table generated from those files, so the docs show
exactly what the latest recorded run printed, met or missed.

    python bench/tables.py           # rewrite the tables in docs/
    python bench/tables.py --check   # exit 1 when a table differs from the recorded figures
"""

# ruff: noqa: RUF001  # the tables are prose for readers: the multiplication sign and en dash are meant

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PAGES = ("docs/waiting.md", "docs/batches.md", "docs/fleet.md")
_BLOCK = re.compile(
    r"(?P<open><!-- bench:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(?P<close><!-- /bench:(?P=name) -->)",
    re.DOTALL,
)
TIMED = {
    "list-gather": "list mode, `gather`",
    "list-as-completed": "list mode, `as_completed`",
    "gateway-gather": "gateway mode, `gather`",
    "gateway-as-completed": "gateway mode, `as_completed`",
    "naive": "naive poller (1 s)",
}


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def verdicts(result: dict[str, Any]) -> dict[str, bool | None]:
    return {row["name"]: row["ok"] for row in result["checks"]}


def cell(text: str, ok: bool | None) -> str:
    """A figure with a target: bold when met, flagged when missed."""
    if ok is None:
        return text
    return f"**{text}**" if ok else f"{text} (**missed**)"


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def not_measured(name: str) -> str:
    return f"Not measured yet: run `nox -s bench` (no `bench/results/{name}.json`)."


def batch() -> str:
    result = load("batch")
    if result is None:
        return not_measured("batch")
    ok = verdicts(result)
    figures, settings = result["figures"], result["settings"]
    modes = [name for name in TIMED if name in figures]
    naive = figures.get("naive")
    longest = max(figures[name]["longest_task_seconds"] for name in modes)

    def row(label: str, target: str, show: Callable[[str, dict[str, Any]], str]) -> list[str]:
        return [label, target, *(show(name, figures[name]) for name in modes)]

    def per_task(name: str, mode: dict[str, Any]) -> str:
        value = mode["non_create_per_task"]
        if name.startswith("list"):
            return cell(f"{value:.3f}", ok.get(f"{name}: non-create requests / task"))
        return f"{value:.2f}"

    def gets(name: str, mode: dict[str, Any]) -> str:
        if naive is None:
            return "n/a"
        if name == "naive":
            return "1×"
        text = f"{mode['gets'] / naive['gets']:.3f}×"
        return cell(text, ok.get(f"{name}: GETs vs naive poller"))

    def p95(name: str, mode: dict[str, Any]) -> str:
        return cell(f"{mode['p95']:.2f} s", ok.get(f"{name}: p95 detection latency"))

    def wall(name: str, mode: dict[str, Any]) -> str:
        text = f"{mode['wall_seconds']:.1f} s"
        if name.startswith("gateway"):
            text = cell(text, ok.get(f"{name}: wall time (all collected)"))
            return f"{text} (target {mode['wall_target_seconds']:.1f} s)"
        return text

    first = table(
        [
            ["measure", "target", *(TIMED[name] for name in modes)],
            row("non-create requests per task", "list: ≤ 0.1", per_task),
            row("GETs against the naive poller", "gateway: ≤ 0.25×", gets),
            row("detection latency p50", "", lambda _, mode: f"{mode['p50']:.2f} s"),
            row("detection latency p95", "list: ≤ 2 s; gateway: ≤ 3 s", p95),
            row(
                f"wall time (longest task {longest:.1f} s)",
                "gateway: ≤ 1.1 × longest + submit time",
                wall,
            ),
            row("client CPU per task", "", lambda _, mode: f"{mode['cpu_ms_per_task']:.1f} ms"),
            row("tasks collected", "", lambda _, mode: f"{mode['collected']} of {mode['tasks']}"),
        ]
    )
    rows = [["measure", "target", "measured"]]
    memory = figures.get("memory")
    if memory is not None:
        waits = f"{memory['waits']:,}"
        rows.append(
            [
                f"memory per pending wait (tracemalloc, {waits} waits, its asyncio task included)",
                "≤ 3 KB",
                cell(
                    f"{memory['wait_bytes']:,.0f} B",
                    ok.get("memory: per pending wait (with its asyncio task)"),
                )
                + f" (a bare `asyncio.sleep` task: {memory['bare_sleep_task_bytes']:,.0f} B)",
            ]
        )
        rows.append(
            [
                "memory per handle without a wait",
                "about 100 B",
                cell(f"{memory['handle_bytes']:,.0f} B", ok.get("memory: handle without a wait"))
                + f" ({memory['handle_with_state_bytes']:,.0f} B for a new task id with its"
                " shared state)",
            ]
        )
    for variant in figures.get("coalescing", []):
        if variant["shape"] == "one waiter":
            continue
        single = next(
            v["gets"]
            for v in figures["coalescing"]
            if v["mode"] == variant["mode"] and v["shape"] == "one waiter"
        )
        name = f"coalescing {variant['mode']}: GETs, {variant['shape']} vs one"
        rows.append(
            [
                f"10 tasks × {variant['shape']} against 10 tasks × 1 waiter, {variant['mode']}",
                "at most 10 GETs more",
                cell(f"{variant['extra_gets']:+d}", ok.get(name))
                + f" ({variant['gets']} GETs against {single})",
            ]
        )
    intro = (
        f"Recorded on {result['date']} by `python bench/bench_batch.py`: {settings['tasks']:,}"
        f" tasks of {settings['min']:g}–{settings['max']:g} s (seed {settings['seed']})."
    )
    return "\n\n".join([intro, first, table(rows)])


def cycle() -> str:
    rows = [
        [
            "requests at a time",
            "raw aiohttp",
            "kling_async",
            "ratio (median of paired rounds)",
            "ratio quartiles",
            "target",
            "recorded",
        ]
    ]
    for width in (1, 16):
        result = load(f"cycle-{width}")
        if result is None:
            rows.append([str(width), "", "", not_measured(f"cycle-{width}"), "", "≤ 1.25×", ""])
            continue
        (check,) = result["checks"]
        figures, settings = result["figures"], result["settings"]
        quartiles = " / ".join(f"{q:.3f}" for q in figures["ratio_quartiles"])
        rows.append(
            [
                str(width),
                f"{figures['raw_us']:.1f} µs",
                f"{figures['sdk_us']:.1f} µs",
                cell(f"{check['measured']:.3f}×", check["ok"]),
                quartiles,
                "≤ 1.25×",
                f"{result['date']}, {settings['rounds']} rounds × {settings['cycles']} cycles",
            ]
        )
    return table(rows)


def journal() -> str:
    result = load("journal")
    if result is None:
        return not_measured("journal")
    figures, settings = result["figures"], result["settings"]
    (check,) = result["checks"]
    return "\n".join(
        [
            table(
                [
                    ["`synchronous`", "wall time per keyed create", "CPU (all threads)", "target"],
                    [
                        "`NORMAL` (the default)",
                        cell(f"{figures['normal_wall_us'] / 1000:.2f} ms", check["ok"]),
                        f"{figures['normal_cpu_us'] / 1000:.2f} ms",
                        "≤ 2 ms",
                    ],
                    [
                        "`FULL`",
                        f"{figures['full_wall_us'] / 1000:.2f} ms",
                        f"{figures['full_cpu_us'] / 1000:.2f} ms",
                        "",
                    ],
                ]
            ),
            "",
            f"Recorded on {result['date']} by `python bench/bench_journal.py` (median of"
            f" {settings['rounds']} × {settings['creates']}); one thread hop took"
            f" {figures['thread_hop_us']} µs, and a keyed create makes three.",
        ]
    )


def fleet() -> str:
    result = load("fleet")
    if result is None:
        return not_measured("fleet")
    settings, figures = result["settings"], result["figures"]
    rows = [["figure", "measured", "target"]]
    for check in result["checks"]:
        rows.append([check["name"], cell(check["shown"], check["ok"]), check["target"]])
    rows += [[name, str(value), ""] for name, value in figures.items()]
    return "\n".join(
        [
            table(rows),
            "",
            f"Recorded on {result['date']} by `python bench/bench_fleet.py` with"
            f" {settings['tasks']} extends of {settings['min']:g}–{settings['max']:g} s, the"
            f" account's limit {settings['limit']}, {settings['processes']} processes against"
            " one (default policies, the list offered).",
        ]
    )


RENDER: dict[str, Callable[[], str]] = {
    "batch": batch,
    "cycle": cycle,
    "fleet": fleet,
    "journal": journal,
}


def render(text: str) -> str:
    """The page's text with every bench block regenerated from the recorded figures."""

    def replace(found: re.Match[str]) -> str:
        name = found["name"]
        if name not in RENDER:
            raise SystemExit(f"unknown bench block {name!r}; known: {', '.join(RENDER)}")
        return f"{found['open']}{RENDER[name]()}\n{found['close']}"

    return _BLOCK.sub(replace, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    stale = []
    for page in PAGES:
        path = ROOT / page
        text = path.read_text(encoding="utf-8")
        rendered = render(text)
        if rendered != text:
            stale.append(page)
            if not args.check:
                path.write_text(rendered, encoding="utf-8")
    if args.check and stale:
        print(f"out of date with bench/results: {', '.join(stale)} (run python bench/tables.py)")
        return 1
    print(("rewrote " + ", ".join(stale)) if stale else "the docs' tables are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
