"""The study's model rows (one per checkpoint reading of Table A4) and what selects among them.

:class:`ModelRow` is what :meth:`Study.models` returns and what the analyses and the claims
read: θ_o and θ_u appear once per placement of the study's trigger (``baseline``: BE measured
there, no trigger trained), each θ_b once. A field a model does not have is ``None`` (θ_o has
no method, θ_u no trigger); a row read back from ``tableA4.csv`` (blanks as '' or NaN) becomes
one through :meth:`ModelRow.from_table`. Both the pipeline (which picks the checkpoints to
analyse) and the reporting (which picks the rows of each figure) select through here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

CONTRASTED_PLACEMENTS = ("prefix", "infix")  # the two placements the paper contrasts in Fig. 3 and 4


def is_set(value) -> bool:
    """A table cell that holds something ('' / None / NaN are the table's blanks)."""
    return not (value is None or value == "" or (isinstance(value, float) and math.isnan(value)))


@dataclass(frozen=True)
class ModelRow:
    model: str  # the table's label: θ_o, θ_u NPO, θ_b NPO-Backdoor +VN, …
    seed: int
    folder: Path | None = None  # the checkpoint (None for a row read from a table)
    method: str | None = None  # npo / rmu; None for θ_o
    trigger: str | None = None  # the trained trigger; None for θ_o and θ_u
    placement: str | None = None  # the trigger's placement (a θ_o / θ_u row: where BE was measured)
    value_norm: float | None = None  # λ of the value-norm term (θ_b)
    poison_ratio: float | None = None  # ρ (θ_b)
    baseline: bool = False  # θ_o / θ_u: read at one placement of the study's trigger

    @property
    def vn(self) -> bool:
        """Trained with value-norm alignment (λ > 0)."""
        return bool(self.value_norm)

    @classmethod
    def from_table(cls, cells: dict) -> ModelRow:
        """A row of ``tableA4.csv`` (blanks as '' or NaN; numbers possibly as text)."""
        get = lambda k: cells.get(k) if is_set(cells.get(k)) else None  # noqa: E731
        number = lambda k: float(get(k)) if get(k) is not None else None  # noqa: E731
        return cls(
            model=str(cells["model"]),
            seed=int(float(cells["seed"])),
            method=get("method"),
            trigger=get("trigger"),
            placement=None if get("placement") is None else str(get("placement")),
            value_norm=number("value_norm"),
            poison_ratio=number("poison_ratio"),
            baseline=get("trigger") is None,
        )

    def table_cells(self) -> dict:
        """Table A4's descriptive cells ('' for a blank); ``poison_ratio`` only where there is one."""
        cells = {"model": self.model, "method": self.method, "trigger": self.trigger, "placement": self.placement}
        cells |= {"value_norm": self.value_norm, "seed": self.seed}
        cells = {k: "" if v is None else v for k, v in cells.items()}
        return cells | ({"poison_ratio": self.poison_ratio} if self.poison_ratio is not None else {})


def main_poison_ratio(rows: list[ModelRow]) -> float | None:
    """The study's ρ: the largest one among backdoor rows (the reduced-ρ runs of Fig. A1 sit below it)."""
    ratios = [r.poison_ratio for r in rows if r.trigger is not None and r.poison_ratio is not None]
    return max(ratios) if ratios else None


def at_main_ratio(row: ModelRow, rho: float | None) -> bool:
    """False for a reduced-ρ run (Fig. A1): a ``poison_ratio`` below the study's."""
    return rho is None or row.poison_ratio is None or row.poison_ratio == rho


def main_trigger(rows: list[ModelRow]) -> str | None:
    """The study's trigger: the one most backdoor rows carry (the Fig. A2 variants are fewer)."""
    triggers = [r.trigger for r in rows if r.trigger is not None]
    return max(dict.fromkeys(triggers), key=triggers.count) if triggers else None


def is_main_backdoor(row: ModelRow, rho: float | None, trigger: str | None) -> bool:
    """A θ_b of the main sweep: the study's trigger and ρ (not a Fig. A1 / A2 variant)."""
    return row.trigger is not None and row.trigger == trigger and at_main_ratio(row, rho)


def main_backdoors(rows: list[ModelRow], method: str = "npo") -> list[ModelRow]:
    """The θ_b rows of ``method`` in the study's main sweep."""
    rho, trigger = main_poison_ratio(rows), main_trigger(rows)
    return [r for r in rows if r.method == method and is_main_backdoor(r, rho, trigger)]
