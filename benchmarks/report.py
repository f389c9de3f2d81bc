"""Measurements, the machine they were taken on, and the BENCHMARKS.md they are written to."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

type Better = Literal["higher", "lower"]


@dataclass(slots=True)
class Samples:
    """Repeated measurements of one figure; the report shows the median and the range."""

    unit: str
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def range(self) -> str:
        return f"{fmt(min(self.values))} to {fmt(max(self.values))}" if self.values else "n/a"

    def spread(self) -> str:
        """E.g. "median of 3 runs, 5,442 to 6,127"; "1 run" when there was one."""
        if len(self.values) < 2:
            return "1 run"
        return f"median of {len(self.values)} runs, {self.range()}"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: our figure against its baseline, measured in the same run."""

    scenario: str
    ours: float
    baseline: float
    unit: str
    better: Better
    notes: str

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("nan")


def fmt(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _first(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip() if ":" in line else line
    except OSError:
        pass
    return ""


def _os_release() -> str:
    try:
        text = Path("/etc/os-release").read_text(errors="replace")
    except OSError:
        return platform.system()
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def machine() -> list[tuple[str, str]]:
    cpu = _first("/proc/cpuinfo", "model name") or platform.processor() or "unknown"
    mem_kib = _first("/proc/meminfo", "MemTotal").split()[:1]
    memory = f"{int(mem_kib[0]) / 1024 / 1024:.1f} GiB" if mem_kib else "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        ("CPU", cpu),
        ("Cores", f"{os.cpu_count()} logical ({usable} usable by this process)"),
        ("Memory", memory),
        ("OS", f"{_os_release()}, kernel {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
    ]


def load_average() -> str:
    """The 1/5/15-minute load averages: other work on the machine skews every figure."""
    try:
        one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    except (OSError, ValueError):
        return "unknown"
    return f"{one} / {five} / {fifteen} (1 / 5 / 15 min)"


def _row(row: Row) -> str:
    ours, baseline = f"{fmt(row.ours)} {row.unit}", f"{fmt(row.baseline)} {row.unit}"
    ratio = f"{row.ratio:.2f}x ({row.better} is better)"
    return f"| {row.scenario} | {ours} | {baseline} | {ratio} | {row.notes} |"


def render(
    rows: list[Row],
    services: list[tuple[str, str]],
    started: datetime,
    seconds: float,
    mode: str,
) -> str:
    stamp = started.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`.venv/bin/python -m benchmarks`); do not edit by hand. Every",
        "figure below was measured in one run on the machine described here, baselines included,",
        "so ratios compare like with like. Throughputs are medians of the repeated runs named in",
        "the notes; a ratio is ours ÷ baseline.",
        "",
        f"- **Run**: {stamp}, {mode}, {seconds:.0f} s wall time",
    ]
    lines += [f"- **{name}**: {value}" for name, value in [*machine(), *services]]
    lines += [
        "",
        "| Scenario | Ours | Baseline | Ratio (ours ÷ baseline) | Notes |",
        "|---|---|---|---|---|",
        *(_row(row) for row in rows),
        "",
    ]
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
