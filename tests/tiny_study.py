"""The tiny finished study that the output, browser and notebook tests share.

Built at most once per test session (a few minutes of CPU): the smoke-test config with two
placements (the analyses contrast prefix and infix) and a short evaluation, then the analyses,
the figures and the report. Test modules call :func:`tiny_study` from a fixture; the module-level
cache makes every module get the same folder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from sinkprobe.pipeline.analyses import analyse_study
from sinkprobe.pipeline.study import Study, quick_config, run_study
from sinkprobe.reporting.figures import make_figures
from sinkprobe.reporting.report import write_report

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "training" / "embedded"
N_SAMPLES = 16  # D_f prompts per analysis: enough for every statistic, cheap on a shared CPU


@dataclass(frozen=True)
class TinyStudy:
    folder: Path
    rows: list[dict]
    figures: Path
    report: Path


def tiny_config():
    cfg = quick_config()
    return replace(cfg, placements=("prefix", "infix"), eval=replace(cfg.eval, max_items=4, n_boot=50))


_built: TinyStudy | None = None


def tiny_study(tmp_path_factory) -> TinyStudy:
    """The shared tiny study (built on first use, under pytest's session temp folder)."""
    global _built
    if _built is None:
        torch.set_num_threads(2)
        out = tmp_path_factory.mktemp("tiny_study")
        cfg = tiny_config()
        run_study(
            cfg, out, RECIPES, figures=None, jobs=2
        )  # the parallel path; the stage tests re-check it sequentially
        rows = Study(cfg, out, RECIPES, log=lambda _: None).models()  # every stage is reused: no training
        analyse_study(out, rows, N_SAMPLES, n_boot=200)  # reused when run_study already analysed
        figures = out / "figures"
        make_figures(out, figures)
        _built = TinyStudy(out, rows, figures, write_report(out, figures, out / "report.html"))
    return _built
