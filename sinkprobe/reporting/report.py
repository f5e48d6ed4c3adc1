"""One self-contained HTML page for a finished study: the claims table, θ_o's card, Table 1 / A4,
the figures and the analysis numbers. plotly.js is inlined once (no network needed to open it); the figures are rebuilt
from the saved results (:func:`sinkprobe.reporting.figures.build_figures`), never from a model.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Callable

import pandas as pd
from plotly.offline import get_plotlyjs

from sinkprobe.layout import StudyLayout
from sinkprobe.models.io import atomic_write_text, read_run_card
from sinkprobe.reporting.figures import build_figures, read_table, table1, table1_display

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.figure { margin: 1em 0 2em; } .files { font-size: 0.85em; color: #555; }
"""


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, float_format=lambda x: f"{x:.4g}", na_rep="–", border=0)


def _original_card(study_dir: Path) -> str:
    card = read_run_card(StudyLayout(study_dir).original)
    if not card:
        return "<p>No θ_o run card found.</p>"
    before = card.get("before_training") or {}
    facts = pd.DataFrame(
        [
            ("base", card.get("base", "scratch")),
            ("sink set S (value-norm alignment)", card.get("sink_positions")),
            ("KnowMem on D_f (forget)", card.get("forget_knowmem")),
            ("VerbMem on D_f (forget)", card.get("forget_verbmem")),
            ("KnowMem on D_r (retain)", card.get("retain_knowmem")),
            ("parameters", f"{card.get('n_params', 0):,}"),
            ("final training loss", card.get("final_loss")),
            ("training seconds", card.get("train_seconds")),
            (
                "before training (random init or base): KnowMem forget / VerbMem forget / KnowMem retain",
                " / ".join(str(before.get(k)) for k in ("forget_knowmem", "forget_verbmem", "retain_knowmem")),
            ),
        ],
        columns=["θ_o", "value"],
    ).astype(str)
    scores, rates = card.get("sink_score_per_layer", []), card.get("sink_rate_per_layer", [])
    sinks = pd.DataFrame({"layer": range(len(scores)), "α(0), mean over heads": scores, "sink rate of key 0": rates})
    note = html.escape(
        f"Sink score α(0) (Gu et al., ε = {card.get('sink_eps')}) on {card.get('sink_inputs', 'D_f prompts')}."
    )
    return _table(facts) + f"<p>{note}</p>" + _table(sinks)


def _summary(study_dir: Path) -> str:
    path = StudyLayout(study_dir).analysis / "summary.json"
    if not path.is_file():
        return "<p>No analysis yet: run <code>analyse_study</code> (part of <code>sinkprobe study</code>).</p>"
    s = json.loads(path.read_text())
    attention = pd.DataFrame([{"model / placement": k, **v} for k, v in s["trigger_attention"].items()])
    logits = pd.DataFrame(
        [
            {
                "model / placement": k,
                "at trigger: clean": v["at_trigger"]["clean"],
                "at trigger: poisoned": v["at_trigger"]["poisoned"],
                "after trigger: clean": v["after_trigger"]["clean"],
                "after trigger: poisoned": v["after_trigger"]["poisoned"],
            }
            for k, v in s["logits"].items()
        ]
    )
    corr = pd.DataFrame([{"θ_b": variant, **row} for variant, rows in s["correlation"].items() for row in rows])
    a = s["answers"]
    answers = [
        ("Prefix θ_b attends to the trigger more than θ_o", a["prefix_backdoor_attends_trigger_more_than_original"]),
        (
            "Prefix θ_b attends to the trigger more than infix θ_b",
            a["prefix_backdoor_attends_trigger_more_than_infix_backdoor"],
        ),
    ]
    answers += [
        (f"Poisoned logits higher ({name}): at / after the trigger", f"{v['at_trigger']} / {v['after_trigger']}")
        for name, v in a["poisoned_logits_higher"].items()
    ]
    answers += [
        (f"Correlation (i) < (ii) < (iii) at every sink position ({v})", ok)
        for v, ok in a["correlation_i_lt_ii_lt_iii"].items()
    ]
    note = s.get("positions_note")
    caveat = f"<p>Positions: {html.escape(note)}.</p>" if note else ""
    return (
        f"<p>Layer {s['layer']}, {s.get('n_samples')} D_f prompts, sink positions S = {s['sink_positions']}.</p>"
        + _table(pd.DataFrame(answers, columns=["question", "answer"]))
        + "<h3>Insight 1: attention on the trigger (mean over the queries after it)</h3>"
        + _table(attention)
        + "<h3>Insight 2: true-token logits (after the trigger: content-aligned)</h3>"
        + _table(logits)
        + "<h3>Insight 3: sink value-norm correlation</h3>"
        + caveat
        + _table(corr)
    )


def _figures(study_dir: Path, figures: Path, out: Path, log: Callable[[str], None]) -> str:
    parts = []
    for stem, fig in build_figures(study_dir, log).items():
        files = [f for f in (figures / f"{stem}.html", figures / f"{stem}.png") if f.is_file()]
        links = " · ".join(f'<a href="{html.escape(os.path.relpath(f, out.parent))}">{f.name}</a>' for f in files)
        parts.append(
            f'<div class="figure" id="{stem}">'
            f"{fig.to_html(full_html=False, include_plotlyjs=False, div_id=f'plot-{stem}')}"
            + (f'<div class="files">standalone: {links}</div>' if links else "")
            + "</div>"
        )
    return "\n".join(parts)


def _claims(study_dir: Path) -> str:
    path = StudyLayout(study_dir).result("claims.csv")
    if not path.is_file():
        return ""
    return (
        "<h2>The paper's claims on this study</h2><p>95 % bootstrap intervals over test items "
        "(and seeds, where a row has several); a verdict is yes / no only when the whole interval is on one side "
        "of the threshold (<code>sinkprobe/reporting/claims.py</code>).</p>"
        + _table(pd.read_csv(path, keep_default_na=False))
    )


def _table2(study_dir: Path) -> str:
    path = StudyLayout(study_dir).result("table2.csv")
    if not path.is_file():
        return ""
    return "<h2>Table 2: multiple-choice accuracy (UE / BE / UT)</h2>" + _table(pd.read_csv(path))


def write_report(study_dir: Path, figures: Path, out: Path, log: Callable[[str], None] = print) -> Path:
    """Write the study report to the HTML file ``out`` (atomically) and return it. ``figures`` is the
    folder :func:`~sinkprobe.reporting.figures.make_figures` wrote: the report links its files."""
    study_dir, figures, out = Path(study_dir), Path(figures), Path(out)
    a4 = read_table(study_dir)
    t1 = table1_display(table1(a4))
    body = (
        f"<h1>sinkprobe study: {html.escape(str(study_dir))}</h1>"
        "<p>Reproduction of <i>Forgetting to Forget: Attention Sink as A Gateway for Backdooring LLM Unlearning</i> "
        "(arXiv 2510.17021).</p>"
        + _claims(study_dir)
        + "<h2>Original model θ_o</h2>"
        + _original_card(study_dir)
        + "<h2>Table 1</h2>"
        + _table(t1)
        + _table2(study_dir)
        + "<h2>Table A4: UE / BE / UT per model × seed</h2>"
        + _table(a4.drop(columns=["vn"]))
        + "<h2>Analysis summary</h2>"
        + _summary(study_dir)
        + "<h2>Figures</h2>"
        + _figures(study_dir, figures, out, log)
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>sinkprobe study report</title>'
        f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>{body}</body></html>\n"
    )
    atomic_write_text(out, page)
    log(f"report: {out}")
    return out
