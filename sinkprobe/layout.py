"""The study folder, named in one place. Every stage reads and writes through :class:`StudyLayout`::

STUDY/
  world/          corpus.json, tokenizer/, stage.json        (the world and its tokenizer)
  models/NAME/    weights, tokenizer, run_card.json         (θ_o = original, θ_u, θ_b)
  states/NAME/    resumable training states of unfinished runs
  states/references/  frozen-model references the runs share
  results/        tableA4, table2, claims (.csv/.md), timing.json
  analysis/       Fig. 3-5 tensors and tables, summary.json
  report.html
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StudyLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def find(cls, default: str = "runs/embedded") -> "StudyLayout":
        """A finished study, for a notebook: ``$SINKPROBE_STUDY``, else ``default``, from the
        repository root or a folder one level below it (``analysis_notebooks/``)."""
        root = Path(os.environ.get("SINKPROBE_STUDY", default))
        if not root.is_absolute() and not root.exists():
            root = Path("..") / root
        layout = cls(root)
        if not layout.original.is_dir():
            raise FileNotFoundError(
                f"no finished study at {root.resolve()}: run `sinkprobe study` or set SINKPROBE_STUDY"
            )
        return layout

    @staticmethod
    def backdoor_name(placement: str, value_norm: bool, seed: int, tag: str = "") -> str:
        """The folder name of a study's NPO-Backdoor run (``tag``: a Fig. A1 / A2 variant, "_rho05")."""
        return f"npo_backdoor_{placement}_{'vn' if value_norm else 'vanilla'}{tag}_s{seed}"

    @staticmethod
    def unlearned_name(seed: int, first_seed: int) -> str:
        """θ_u NPO's folder at ``seed``: the first seed's is plain ``npo``, so a one-seed study's is reused."""
        return "npo" if seed == first_seed else f"npo_s{seed}"

    def backdoored(self, placement: str, value_norm: bool, seed: int = 0) -> Path:
        return self.model(self.backdoor_name(placement, value_norm, seed))

    def first_seed(self) -> int:
        """The study's first seed: the one θ_u NPO's plain ``npo`` folder was trained with."""
        return int(json.loads((self.model("npo") / "run_card.json").read_text())["config"]["seed"])

    @property
    def world(self) -> Path:
        return self.root / "world"

    @property
    def corpus(self) -> Path:
        return self.world / "corpus.json"

    @property
    def tokenizer(self) -> Path:
        return self.world / "tokenizer"

    @property
    def world_card(self) -> Path:
        return self.world / "stage.json"

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    @property
    def original(self) -> Path:
        return self.model("original")

    def state(self, name: str) -> Path:
        return self.root / "states" / name

    @property
    def references(self) -> Path:
        return self.state("references")

    def result(self, name: str) -> Path:
        """``results/NAME``: a table stem (``tableA4`` → ``.csv`` / ``.md``) or a file."""
        return self.root / "results" / name

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    @property
    def report(self) -> Path:
        return self.root / "report.html"
