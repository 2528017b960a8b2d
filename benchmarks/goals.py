"""Goal rows: each benchmark's JSON carries `"goals": [goal(...), ...]`, and `make bench`
(run_all.py) prints them together as one table, measured value beside its goal."""

from __future__ import annotations


def goal(name: str, value: float, target: str, met: bool) -> dict:
    """One row: what is measured, its value, the goal as text (">= 1.0"), whether it is met."""
    return {"name": name, "value": value, "goal": target, "met": bool(met)}


def at_least(name: str, value: float, minimum: float) -> dict:
    return goal(name, value, f">= {minimum:g}", value >= minimum)


def at_most(name: str, value: float, maximum: float) -> dict:
    return goal(name, value, f"<= {maximum:g}", value <= maximum)


def table(rows: list[tuple[str, dict]]) -> str:
    """The goals of every benchmark as a text table: benchmark, figure, measured, goal, met."""
    lines = [("benchmark", "figure", "measured", "goal", "met")]
    for bench, row in rows:
        lines.append((bench, row["name"], f"{row['value']:g}", row["goal"], "yes" if row["met"] else "NO"))
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)
