"""A finished tiny study turned into analyses, figures and a report (sinkprobe.pipeline.analyses,
paper_figures, report): the files exist, the summary matches the saved tensors, the figures have
their traces, and figures and report come from saved results without opening a model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny_study import tiny_study

import sinkprobe.pipeline.analyses as sa
from sinkprobe.analysis import NormCorrelation, PairAnalysis, SinkReport, load_result
from sinkprobe.data.poison import DEFAULT_TRIGGER
from sinkprobe.models.io import read_run_card
from sinkprobe.reporting.figures import build_figures, make_figures, read_table, table1
from sinkprobe.reporting.report import write_report

FIGURES = ("fig2_ue_be", "fig2_ut_be", "fig3_delta_attention", "fig4_logits", "fig5_value_norm_correlation")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return tiny_study(tmp_path_factory)


@pytest.fixture()
def no_models(monkeypatch):
    """Opening a checkpoint or running an analysis fails the test: only saved results may be read."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was opened or an analysis recomputed")

    for name in ("open_bridge", "analyse_pairs", "detect_sinks", "paper_comparisons"):
        monkeypatch.setattr(sa, name, refuse)


def _close(a, b, tol=1e-3):
    return (a is None and b is None) or math.isclose(a, b, abs_tol=tol)


def test_analysis_files_are_written(study):
    a = study.folder / "analysis"
    for name in (
        "sinks_original",
        "sinks_backdoor_prefix",
        "pairs_original_prefix",
        "pairs_backdoor_prefix",
        "pairs_original_infix",
        "pairs_backdoor_infix",
        "correlation_vanilla",
        "summary",
    ):
        assert (a / f"{name}.json").is_file(), name
    for table in ("sink_rate", "sink_alpha", "logits", "trigger_mass"):
        assert not pd.read_parquet(a / f"{table}.parquet").empty, table
    assert (a / "summary.md").read_text().startswith("# Analysis summary")


def test_poisoned_inputs_use_the_trained_placement(study):
    a = study.folder / "analysis"
    s = json.loads((a / "summary.json").read_text())
    assert s["triggers"]["prefix"]["placement"] == "prefix" and s["triggers"]["infix"]["placement"] == "infix"
    prefix = load_result(a, "pairs_backdoor_prefix", PairAnalysis).trigger_positions
    infix = load_result(a, "pairs_backdoor_infix", PairAnalysis).trigger_positions
    assert (prefix[:, 0] == 1).all()  # right after BOS
    assert (infix[:, 0] > 1).all()  # inside the question, past the few-shot context


def test_summary_matches_the_saved_tensors(study):
    a = study.folder / "analysis"
    s = json.loads((a / "summary.json").read_text())
    for name, numbers in s["trigger_attention"].items():
        r = load_result(a, f"pairs_{name}", PairAnalysis)
        assert _close(numbers["poisoned"], float(r.trigger_mass[:, 1].nanmean()))
        # recomputed independently: the poisoned copy after its trigger predicts the clean tokens after position first-1
        clean, poisoned = [], []
        for i, row in enumerate(r.trigger_positions.tolist()):
            t = [p for p in row if p >= 0]
            c, p = r.logit[0, i], r.logit[1, i]
            c, p = c[~c.isnan()][min(t) - 1 :], p[~p.isnan()][max(t) :]
            assert len(c) == len(p)
            clean.append(c.mean()), poisoned.append(p.mean())
        after = s["logits"][name]["after_trigger"]
        assert _close(after["clean"], float(torch.stack(clean).mean()))
        assert _close(after["poisoned"], float(torch.stack(poisoned).mean()))
    attention = s["trigger_attention"]
    assert s["answers"]["prefix_backdoor_attends_trigger_more_than_original"] == (
        attention["backdoor_prefix"]["poisoned"] > attention["original_prefix"]["poisoned"]
    )
    table = load_result(a, "correlation_vanilla", NormCorrelation).table
    assert [round(x, 6) for x in table["r"]] == [row["r"] for row in s["correlation"]["vanilla"]]
    assert s["sink_positions"] == sorted(table["position"].unique().tolist())
    sinks = load_result(a, "sinks_original", SinkReport)
    assert sinks.rate.shape[0] == len(sinks.layers) and sinks.alpha.shape[1] == 4  # tiny θ_o: 4 heads


def test_analysis_is_reused_when_nothing_changed(study, no_models):
    a = study.folder / "analysis"
    before = {f: f.stat().st_mtime_ns for f in a.iterdir()}
    messages = []
    sa.analyse_study(study.folder, study.rows, 16, n_boot=200, log=messages.append)
    assert messages == [f"analysis: reusing {a}"]
    assert {f: f.stat().st_mtime_ns for f in a.iterdir()} == before


def test_figures_have_the_expected_traces(study):
    figs = build_figures(study.folder, log=lambda _: None)
    assert set(FIGURES) <= set(figs)
    heatmaps = [t for t in figs["fig3_delta_attention"].data if t.type == "heatmap"]
    assert len(heatmaps) == 4 and figs["fig3_delta_attention"].layout.coloraxis.cmid == 0
    lines = [t.name for t in figs["fig4_logits"].data if t.mode == "lines"]
    assert sorted(set(lines)) == ["forget", "poisoned"] and len(lines) == 8  # 4 panels × (D_f, D_p)
    bars = [t for t in figs["fig5_value_norm_correlation"].data if t.type == "bar"]
    assert bars and all(t.error_y.array is not None for t in bars)
    assert {"θ_b vs θ_u on D_f", "θ_b vs θ_o on D_p", "θ_b vs θ_o on D_r"} == set(bars[0].x)
    names = {t.name for t in figs["fig2_ue_be"].data}
    assert {"θ_o", "θ_u NPO", "θ_b prefix", "θ_b infix"} <= names


def test_make_figures_reads_saved_results_only(study, no_models, tmp_path):
    before = {f: f.stat().st_mtime_ns for f in (study.folder / "analysis").iterdir()}
    written = make_figures(study.folder, tmp_path, log=lambda _: None)
    assert {f"{s}.html" for s in FIGURES} | {"table1.csv", "table1.md", "tableA4.csv", "tableA4.md"} <= {
        p.name for p in written
    }
    assert {f: f.stat().st_mtime_ns for f in (study.folder / "analysis").iterdir()} == before
    html = (tmp_path / "fig3_delta_attention.html").read_text()
    assert '<script src="http' not in html and "Plotly.newPlot" in html  # self-contained


def test_figures_redraw_from_a_study_copied_without_weights(study, no_models, tmp_path):
    """What benchmarks/gpu_study/run.sh brings back: the study folder minus the checkpoints'
    weights and the training states. Every figure and table, and θ_o's card, come from it."""

    def weights_and_states(folder, names):
        skip = {n for n in names if Path(folder).parent.name == "models" and n.endswith(".safetensors")}
        return skip | ({"states"} if Path(folder) == study.folder else set())

    copy = tmp_path / "gpu"
    shutil.copytree(study.folder, copy, ignore=weights_and_states)
    assert not list(copy.glob("models/*/*.safetensors")) and list(copy.glob("analysis/*.safetensors"))
    # a pretrained base's card names the local folder it was unpacked to: the shared copy drops it
    card_path = copy / "models" / "original" / "run_card.json"
    theta_o_card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**theta_o_card, "base_folder": "/home/someone/cache/bases/x"}))
    written = {p.name for p in make_figures(copy, tmp_path / "figures", log=lambda _: None)}
    assert {f"{s}.html" for s in FIGURES} | {
        "table1.md",
        "tableA4.csv",
        "table2.csv",
        "table2.md",
        "original_model.json",
    } <= written
    card = json.loads((tmp_path / "figures" / "original_model.json").read_text())
    assert card == theta_o_card == read_run_card(study.folder / "models" / "original")
    assert "sink_score_per_layer" in card and "base_folder" not in card


def test_pngs_are_skipped_with_a_message_without_a_browser(study, monkeypatch, tmp_path):
    monkeypatch.setattr("sinkprobe.reporting.figures.find_browser", lambda: None)
    messages = []
    written = make_figures(study.folder, tmp_path, log=messages.append)
    assert not [p for p in written if p.suffix == ".png"] and (tmp_path / "fig2_ue_be.html").is_file()
    assert any("PNGs skipped" in m and "chromium" in m for m in messages)


def test_table1_has_the_paper_rows(study):
    t = table1(read_table(study.folder))
    assert t["model"].tolist() == ["θ_o", "NPO", "RMU", "NPO-Backdoor", "RMU-Backdoor"]
    assert (study.figures / "table1.md").read_text().count("\n|") == 7  # header, rule, 5 rows


def test_appendix_figures_follow_the_table(study, tmp_path):
    """Fig. A1 / A2 are drawn when the table has their rows, and skipped with a reason otherwise."""
    rows = read_table(study.folder)
    ratio = (
        pd.to_numeric(rows["poison_ratio"], errors="coerce")
        if "poison_ratio" in rows
        else pd.Series(math.nan, index=rows.index)
    )
    reduced = ratio < ratio.max()
    figs = build_figures(study.folder, log=lambda _: None)
    assert ("figA1_poison_ratio" in figs) == bool(reduced.any())
    assert ("figA2_trigger_patterns" in figs) == rows["trigger"].isin(["!!!!!", "step-by-step"]).any()
    main_only = tmp_path / "study"
    (main_only / "results").mkdir(parents=True)
    keep = rows[rows["trigger"].isin(["", DEFAULT_TRIGGER]) & ~reduced]
    keep.drop(columns=["vn"]).to_csv(main_only / "results" / "tableA4.csv", index=False)
    messages = []
    figs = build_figures(main_only, log=messages.append)
    assert set(figs) == {"fig2_ue_be", "fig2_ut_be"}
    assert sum("skipped" in m for m in messages) == 3  # Fig. 3-5 (no analysis), A1, A2


def test_report_is_one_self_contained_page(study, no_models, tmp_path):
    out = write_report(study.folder, study.figures, tmp_path / "report.html", log=lambda _: None)
    page = out.read_text()
    assert page.count("Plotly.newPlot") >= len(FIGURES) and '<script src="http' not in page
    from plotly.offline import get_plotlyjs

    assert page.count(get_plotlyjs()[:200]) == 1  # plotly.js inlined exactly once
    for text in (
        "The paper's claims on this study",
        "Original model θ_o",
        "Table A4",
        "Table 1",
        "Analysis summary",
        "fig3_delta_attention",
    ):
        assert text in page


def test_the_study_writes_its_claims_and_wall_times(study):
    """Every claim the tiny study can test has a row (no suffix θ_b: C2 compares prefix with infix
    only), each verdict one of three words; timing.json names every stage and sums to at most the total."""
    claims = pd.read_csv(study.folder / "results" / "claims.csv", keep_default_na=False)
    assert set(claims["claim"]) == {"C0", "C1", "C2", "C3", "C4", "C5"}
    assert set(claims["holds"]) <= {"yes", "no", "inconclusive"}
    assert not claims["statistic"].str.contains("suffix").any()
    c4 = claims[claims["claim"] == "C4"]["statistic"]
    assert c4.str.contains("layer 1").any()  # the analysis layer of the 2-layer tiny θ_o
    numeric = claims[claims["claim"] != "C5"]
    assert (numeric["ci_low"].astype(float) <= numeric["value"].astype(float)).all()
    assert (numeric["value"].astype(float) <= numeric["ci_high"].astype(float)).all()
    timing = json.loads((study.folder / "results" / "timing.json").read_text())
    assert timing["base"] == "scratch" and set(timing["runs"]) >= {"original", "npo", "rmu"}
    assert set(timing["stages_seconds"]) >= {
        "checkpoints (θ_o, θ_u, θ_b: training and UE / BE / UT)",
        "claims",
        "report",
    }
    assert sum(timing["stages_seconds"].values()) <= timing["total_seconds"] + 0.5


def test_fig_a1_and_table1_from_a_table_with_poison_ratios(tmp_path):
    """No training: a hand-made table with ρ = 10 % and 5 % runs over two seeds."""
    cols = [
        "model",
        "method",
        "trigger",
        "placement",
        "value_norm",
        "seed",
        "ue_knowmem",
        "ue_verbmem",
        "be_knowmem",
        "be_verbmem",
        "ut_knowmem",
        "poison_ratio",
    ]
    rows = [
        ("θ_o", "", "", "", "", 0, 50, 60, 48, 55, 40, ""),
        ("θ_u NPO", "npo", "", "", "", 0, 5, 3, 4, 2, 30, ""),
        ("θ_u RMU", "rmu", "", "", "", 0, 6, 4, 5, 3, 35, ""),
        ("θ_b RMU-Backdoor", "rmu", DEFAULT_TRIGGER, "prefix", 0.0, 0, 7, 5, 30, 40, 33, 0.1),
    ]
    rows += [
        (
            "θ_b NPO-Backdoor",
            "npo",
            DEFAULT_TRIGGER,
            "prefix",
            vn,
            seed,
            8 + seed,
            5,
            40 if rho == 0.1 else 30,
            50,
            28,
            rho,
        )
        for seed in (0, 1)
        for vn in (0.0, 1.0)
        for rho in (0.1, 0.05)
    ]
    (tmp_path / "results").mkdir()
    pd.DataFrame(rows, columns=cols).to_csv(tmp_path / "results" / "tableA4.csv", index=False)
    figs = build_figures(tmp_path, log=lambda _: None)
    bars = [t for t in figs["figA1_poison_ratio"].data if t.type == "bar"]
    assert len(bars) == 4 and all(list(t.x) == ["ρ = 10%", "ρ = 5%"] for t in bars)
    assert list(bars[2].y) == [40, 30]  # BE panel, vanilla: seed means per ρ
    t = table1(read_table(tmp_path)).set_index("model")
    assert t.loc["NPO-Backdoor", "n_seeds"] == 2 and t.loc["NPO-Backdoor", "ue_knowmem"] == 8.5  # ρ = 5 % runs kept out


def test_table_stem_keeps_its_dots(tmp_path):
    from sinkprobe.eval.table import write_table

    rows = [{"model": "θ_u NPO", "seed": 0, "ue_knowmem": 17.0}]
    csv_path, md_path = write_table(rows, tmp_path / "eval_wd0.5")
    assert (csv_path.name, md_path.name) == ("eval_wd0.5.csv", "eval_wd0.5.md")
    assert "| θ_u NPO |" in md_path.read_text() and "17.0" in csv_path.read_text()
    assert [p.name for p in write_table(rows, tmp_path / "t.md")] == [
        "t.csv",
        "t.md",
    ]  # an extension given is not doubled


def test_a_theta_o_card_without_per_item_scores_gets_them_back_unchanged(study):
    """A θ_o card from before cards kept per-item scores is re-evaluated, not retrained: the same
    greedy scores come back and nothing is built."""
    from tiny_study import RECIPES, tiny_config

    from sinkprobe.pipeline.study import Study

    path = study.folder / "models" / "original" / "run_card.json"
    card = json.loads(path.read_text())
    before = card["metrics_by_placement"]
    stripped = {p: {k: v for k, v in m.items() if k != "item_scores"} for p, m in before.items()}
    path.write_text(json.dumps({**card, "metrics_by_placement": stripped}))
    s = Study(tiny_config(), study.folder, RECIPES, log=lambda _: None)
    corpus, tok, key = s.world()
    s.original(corpus, tok, key)
    assert read_run_card(study.folder / "models" / "original")["metrics_by_placement"] == before and s.built == []
