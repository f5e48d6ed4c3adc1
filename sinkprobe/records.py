"""The study's model rows (one per checkpoint of Table A4) and what selects among them.

A row is a dict with ``model`` (the table's label), ``method``, ``trigger``, ``placement``,
``value_norm``, ``seed``, ``poison_ratio`` and ``folder``; θ_o's row has no method and no
trigger, θ_u's no trigger. Rows read back from ``tableA4.csv`` carry blanks as '' or NaN.
Both the pipeline (which picks the checkpoints to analyse) and the reporting (which picks the
rows of each figure) select through here.
"""

from __future__ import annotations

import math

CONTRASTED_PLACEMENTS = ("prefix", "infix")  # the two placements the paper contrasts in Fig. 3 and 4


def is_set(value) -> bool:
    """A table cell that holds something ('' / None / NaN are the table's blanks)."""
    return not (value is None or value == "" or (isinstance(value, float) and math.isnan(value)))


def main_poison_ratio(rows: list[dict]) -> float | None:
    """The study's ρ: the largest one among backdoor rows (the reduced-ρ runs of Fig. A1 sit below it)."""
    ratios = [float(r["poison_ratio"]) for r in rows if is_set(r.get("trigger")) and is_set(r.get("poison_ratio"))]
    return max(ratios) if ratios else None


def at_main_ratio(row: dict, rho: float | None) -> bool:
    """False for a reduced-ρ run (Fig. A1): a ``poison_ratio`` below the study's."""
    return rho is None or not is_set(row.get("poison_ratio")) or float(row["poison_ratio"]) == rho


def main_trigger(rows: list[dict]) -> str | None:
    """The study's trigger: the one most backdoor rows carry (the Fig. A2 variants are fewer)."""
    triggers = [r["trigger"] for r in rows if is_set(r.get("trigger"))]
    return max(dict.fromkeys(triggers), key=triggers.count) if triggers else None


def is_main_backdoor(row: dict, rho: float | None, trigger: str | None) -> bool:
    """A θ_b of the main sweep: the study's trigger and ρ (not a Fig. A1 / A2 variant)."""
    return is_set(row.get("trigger")) and row["trigger"] == trigger and at_main_ratio(row, rho)
