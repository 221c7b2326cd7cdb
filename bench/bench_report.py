"""How every benchmark reports: one markdown row per measure, ready for a table with
``HEADER``, and exactly one JSON line, ``{"bench": "<name>", ...}``, holding every figure,
each row's ratio and target, whether it was met, and the run's wall time."""

from __future__ import annotations

import json
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Comparison = Literal["<", "<=", ">=", ">"]
_COMPARE: Mapping[Comparison, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">=": operator.ge,
    ">": operator.gt,
}

#: The head of a table of the rows every benchmark prints.
HEADER = (
    "| bench | measure | Conveyor | baseline | ratio | target | met | wall s |\n"
    "|---|---|---|---|---|---|---|---|"
)

Figure = float | int | str | None


@dataclass(frozen=True)
class Target:
    """The Conveyor figure (or, ``on_ratio``, Conveyor / baseline) must be
    ``comparison`` ``limit``."""

    comparison: Comparison
    limit: float
    on_ratio: bool = False

    def text(self) -> str:
        subject = "ratio " if self.on_ratio else ""
        return f"{subject}{self.comparison} {self.limit:g}"


@dataclass(frozen=True)
class Row:
    """One measure: Conveyor's figure, the baseline's (``baseline_label`` names it), and
    the target it is held to."""

    measure: str
    conveyor: float | None
    baseline: float | None = None
    baseline_label: str = ""
    target: Target | None = None

    @property
    def ratio(self) -> float | None:
        if self.conveyor is None or not self.baseline:
            return None
        return self.conveyor / self.baseline

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        subject = self.ratio if self.target.on_ratio else self.conveyor
        if subject is None:
            return False
        return _COMPARE[self.target.comparison](subject, self.target.limit)

    def markdown(self, bench: str, wall: float) -> str:
        baseline = "" if self.baseline is None else f"{number(self.baseline)} {self.baseline_label}"
        ratio = "" if self.ratio is None else f"{self.ratio:.3f}x"
        target = "" if self.target is None else self.target.text()
        met = {None: "", True: "yes", False: "**no**"}[self.met]
        cells = [bench, self.measure, number(self.conveyor), baseline.strip(), ratio, target, met]
        return "| " + " | ".join(cells) + f" | {wall:.0f} |"

    def document(self) -> dict[str, Figure | bool]:
        return {
            "measure": self.measure,
            "conveyor": None if self.conveyor is None else round(self.conveyor, 3),
            "baseline": None if self.baseline is None else round(self.baseline, 3),
            "baseline_label": self.baseline_label or None,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "target": None if self.target is None else self.target.text(),
            "met": self.met,
        }


def number(value: float | None) -> str:
    """A figure as the tables show it: three significant digits or so, thousands separated."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def report(bench: str, rows: Sequence[Row], figures: Mapping[str, Figure], started: float) -> bool:
    """Print the rows and the JSON line; whether every target was met.

    ``started`` is the ``time.monotonic()`` of the run's start: the wall time counts from it.
    """
    wall = time.monotonic() - started
    print()
    for row in rows:
        print(row.markdown(bench, wall))
    targets = [row.met for row in rows if row.met is not None]
    met = all(targets)
    line = {
        "bench": bench,
        "wall_seconds": round(wall, 1),
        "targets_met": met if targets else None,
        "rows": [row.document() for row in rows],
        "figures": dict(figures),
    }
    print(json.dumps(line, ensure_ascii=False), flush=True)
    return met
