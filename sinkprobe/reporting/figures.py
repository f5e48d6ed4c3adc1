"""The paper's figures and tables, from a study's saved results (no model is opened).

:func:`build_figures` makes the plotly figures from ``study_dir/results/tableA4.csv`` and the
results :func:`sinkprobe.pipeline.analyses.analyse_study` saved in ``study_dir/analysis/``;
:func:`make_figures` writes each as a self-contained HTML (plotly.js inlined: no network) and,
when a Chrome/Chromium is found, a static PNG through kaleido, plus ``table1.{csv,md}`` and a
copy of ``tableA4.{csv,md}``. A figure whose rows the study does not have (Fig. A1, A2) is
skipped with a log line, and so are the PNGs when no browser is found.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import plotly
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sinkprobe.analysis import NormCorrelation, PairAnalysis, load_result
from sinkprobe.data.poison import DEFAULT_TRIGGER
from sinkprobe.layout import StudyLayout
from sinkprobe.models.io import atomic_write_json, atomic_write_text, read_run_card
from sinkprobe.plots import norm_correlation_bars, position_logits_figure
from sinkprobe.records import CONTRASTED_PLACEMENTS, ModelRow, at_main_ratio, main_poison_ratio, main_trigger
from sinkprobe.tables import write_csv_md

METRICS = ("ue_knowmem", "ue_verbmem", "be_knowmem", "be_verbmem", "ut_knowmem", "gain_knowmem", "gain_verbmem")
PLACEMENT_COLORS = {"prefix": "#d62728", "infix": "#1f77b4", "suffix": "#2ca02c"}
POSITION_COLORS = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880"]
TRIGGER_PATTERNS = (DEFAULT_TRIGGER, "!!!!!", "step-by-step")  # Fig. A2
PNG_SCALE = 2

Log = Callable[[str], None]


# ---- the table -----------------------------------------------------------------------------
def read_table(study_dir: Path) -> pd.DataFrame:
    """``results/tableA4.csv`` with blanks as '' (they mark θ_o / θ_u rows) and numeric metrics."""
    path = StudyLayout(study_dir).result("tableA4.csv")
    if not path.is_file():
        raise FileNotFoundError(f"no table at {path}: run `sinkprobe study --out {study_dir}` first")
    df = pd.read_csv(path, keep_default_na=False, dtype={"trigger": str, "method": str, "placement": str, "model": str})
    for m in METRICS:  # a table written before the gain columns existed reads them as blank
        df[m] = df[m] if m in df else ""
    df[list(METRICS)] = df[list(METRICS)].apply(pd.to_numeric, errors="coerce")
    df["vn"] = pd.to_numeric(df["value_norm"], errors="coerce").fillna(0) > 0
    return df


def references(df: pd.DataFrame) -> pd.DataFrame:
    """θ_o and θ_u rows (no trained trigger) with BE measured at the prefix: the figures' references
    (the table also has their infix / suffix rows, the baselines of those θ_b)."""
    return df[(df["trigger"] == "") & df["placement"].isin(["", "prefix"])]


def reference(df: pd.DataFrame, method: str = "") -> pd.Series:
    """θ_o (``method=''``) or θ_u of ``method``: its reference row."""
    rows = references(df)[lambda r: r["method"] == method]
    if rows.empty:
        raise ValueError(
            f"table has no {'θ_o' if not method else 'θ_u ' + method.upper()} row: "
            "it is a reference point of the figures"
        )
    return rows.iloc[0]


def backdoor_rows(
    df: pd.DataFrame, method: str = "npo", any_trigger: bool = False, main_ratio: bool = True
) -> pd.DataFrame:
    """θ_b rows of ``method`` with the study's trigger (or any), at the study's ρ or (``main_ratio=False``) below it."""
    rows = [ModelRow.from_table(r) for r in df.to_dict("records")]
    rho, trigger = main_poison_ratio(rows), main_trigger(rows)
    keep = [
        r.trigger is not None
        and r.method == method
        and (any_trigger or r.trigger == trigger)
        and at_main_ratio(r, rho) == main_ratio
        for r in rows
    ]
    return df[keep]


def seed_stats(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean and sample std (ddof 1, the one spread over seeds everywhere in sinkprobe; 0 for one seed) of every
    metric over seeds, per group."""
    g = df.groupby(by, sort=False)[list(METRICS)]
    mean, std = g.mean(), g.std(ddof=1).fillna(0)
    return mean.join(std.add_suffix("_std")).join(g.size().rename("n_seeds")).reset_index()


# ---- Fig. 2 / A2: the UE–BE and UT–BE planes ------------------------------------------------
def plane(fig: go.Figure, df: pd.DataFrame, x: str, row: int = 1, col: int = 1, legend: bool = True) -> None:
    """One plane into ``fig``: θ_o, θ_u NPO, and the NPO θ_b of ``df`` as seed means ± std per
    placement (circle: vanilla, square: value-norm aligned). The four regions are split at θ_u's
    value on x (UE: forgets at least as well; UT: keeps at least its utility) and θ_o's BE on y
    (recovers as much as θ_o); the desired region is shaded."""
    o, u = reference(df), reference(df, "npo")
    x_split, y_split = float(u[x]), float(o["be_knowmem"])
    stats = seed_stats(df[df["trigger"] != ""], ["placement", "vn", "trigger"])
    for _, s in stats.iterrows():
        fig.add_scatter(
            x=[s[x]],
            y=[s["be_knowmem"]],
            mode="markers",
            row=row,
            col=col,
            marker={
                "color": PLACEMENT_COLORS.get(s["placement"], "#7f7f7f"),
                "size": 11,
                "symbol": "square" if s["vn"] else "circle",
            },
            error_x={"type": "data", "array": [s[f"{x}_std"]]},
            error_y={"type": "data", "array": [s["be_knowmem_std"]]},
            name=f"θ_b {s['placement']}{' +VN' if s['vn'] else ''}",
            legendgroup=f"{s['placement']}{s['vn']}",
            showlegend=legend,
            hovertemplate=f"θ_b {s['placement']}{' +VN' if s['vn'] else ''} ({s['n_seeds']} seeds)<br>"
            f"{x} %{{x:.2f}}, BE %{{y:.2f}}<extra></extra>",
        )
    for label, r, symbol in (("θ_o", o, "star"), ("θ_u NPO", u, "diamond")):
        fig.add_scatter(
            x=[r[x]],
            y=[r["be_knowmem"]],
            mode="markers+text",
            text=[label],
            textposition="top center",
            row=row,
            col=col,
            marker={"color": "black", "size": 13, "symbol": symbol},
            name=label,
            legendgroup=label,
            showlegend=legend,
            hovertemplate=f"{label}<br>{x} %{{x:.2f}}, BE %{{y:.2f}}<extra></extra>",
        )
    _plane_regions(fig, df, x, x_split, y_split, row, col)


def _plane_regions(
    fig: go.Figure, df: pd.DataFrame, x: str, x_split: float, y_split: float, row: int, col: int
) -> None:
    """The plane's split lines at (``x_split``, ``y_split``), its shaded desired region and axes."""
    top = max(float(np.nanmax(df[[x, "be_knowmem"]].to_numpy(dtype=float))), x_split, y_split) * 1.1 + 1
    desired = (0, x_split) if x.startswith("ue") else (x_split, top)
    fig.add_shape(
        type="rect",
        x0=desired[0],
        x1=desired[1],
        y0=y_split,
        y1=top,
        fillcolor="green",
        opacity=0.1,
        line={"width": 0},
        layer="below",
        row=row,
        col=col,
    )
    fig.add_vline(x=x_split, line={"dash": "dash", "color": "gray"}, row=row, col=col)
    fig.add_hline(y=y_split, line={"dash": "dash", "color": "gray"}, row=row, col=col)
    fig.update_xaxes(
        range=[-0.5, top],
        title=f"{'UE' if x.startswith('ue') else 'UT'} ({x}) {'↓' if x.startswith('ue') else '↑'}",
        row=row,
        col=col,
    )
    fig.update_yaxes(range=[-0.5, top], title="BE (be_knowmem) ↑", row=row, col=col)


def fig2(df: pd.DataFrame, x: str) -> go.Figure:
    main = pd.concat([references(df), backdoor_rows(df)])
    fig = make_subplots(rows=1, cols=1)
    plane(fig, main, x)
    what = (
        "UE on D_f vs held-out BE with the trigger"
        if x.startswith("ue")
        else "UT on D_r vs held-out BE with the trigger"
    )
    return fig.update_layout(
        title=f"Fig. 2: {what} (NPO, seed mean ± std; shaded: desired region)", width=720, height=560
    )


def fig_a2(df: pd.DataFrame) -> go.Figure | None:
    refs = references(df)
    npo_b = backdoor_rows(df, any_trigger=True)
    npo_b = npo_b[~npo_b["vn"]]
    patterns = [t for t in TRIGGER_PATTERNS if (npo_b["trigger"] == t).any()]
    if not set(patterns) - {DEFAULT_TRIGGER}:
        return None
    fig = make_subplots(rows=1, cols=len(patterns), subplot_titles=[f"trigger “{t}”" for t in patterns])
    for i, t in enumerate(patterns, start=1):
        plane(fig, pd.concat([refs, npo_b[npo_b["trigger"] == t]]), "ue_knowmem", col=i, legend=i == 1)
    return fig.update_layout(
        title="Fig. A2: UE vs BE across trigger patterns (vanilla NPO-Backdoor)", width=480 * len(patterns), height=520
    )


# ---- Fig. A1: ρ = 5 % vs 10 % -----------------------------------------------------------------
def fig_a1(df: pd.DataFrame) -> go.Figure | None:
    low = backdoor_rows(df, main_ratio=False)
    low = low[low["placement"] == "prefix"]
    if low.empty:
        return None
    high = backdoor_rows(df)
    high = high[high["placement"] == "prefix"]
    both = pd.concat([high, low]).assign(rho=lambda d: [_ratio_label(r) for r in d.to_dict("records")])
    stats = seed_stats(both, ["rho", "vn"])
    o, u = reference(df), reference(df, "npo")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["(a) UE on D_f ↓", "(b) held-out BE on D_f ↑"])
    for col, metric in enumerate(("ue_knowmem", "be_knowmem"), start=1):
        for vn, color in ((False, "#7f7f7f"), (True, "#d62728")):
            s = stats[stats["vn"] == vn]
            fig.add_bar(
                x=s["rho"],
                y=s[metric],
                error_y={"type": "data", "array": s[f"{metric}_std"]},
                marker_color=color,
                name="θ_b value-norm aligned" if vn else "θ_b vanilla",
                legendgroup=str(vn),
                showlegend=col == 1,
                row=1,
                col=col,
            )
        for label, r, dash in (("θ_o", o, "dot"), ("θ_u NPO", u, "dash")):
            fig.add_hline(
                y=float(r[metric]), line={"dash": dash, "color": "black"}, annotation_text=label, row=1, col=col
            )
    fig.update_xaxes(title="poison ratio ρ")
    return fig.update_layout(
        title="Fig. A1: value-norm alignment under a reduced poison ratio (prefix trigger, KnowMem)",
        barmode="group",
        width=900,
        height=480,
    )


def _ratio_label(row: dict) -> str:
    ratio = row.get("poison_ratio", "")
    return f"ρ = {float(ratio):.0%}" if ratio != "" else "ρ = study default"


# ---- Fig. 3 / 4 / 5: from the saved analyses -------------------------------------------------
PANELS = [
    (m, p) for m in ("original", "backdoor") for p in CONTRASTED_PLACEMENTS
]  # Fig. 3/4 (a)–(d) order: θ_o, θ_b × prefix, infix


def _panel_title(model: str, placement: str) -> str:
    return f"{'θ_o' if model == 'original' else 'θ_b'}, {placement} trigger"


def _saved_pairs(folder: Path) -> dict[tuple[str, str], PairAnalysis]:
    return {
        (m, p): load_result(folder, f"pairs_{m}_{p}", PairAnalysis)
        for m, p in PANELS
        if (folder / f"pairs_{m}_{p}.json").is_file()
    }


def _mark_trigger(fig: go.Figure, r: PairAnalysis, row: int, col: int, both_axes: bool) -> None:
    """Dotted box edges at a trigger every sample has at the same positions (prefix); a shaded band
    over the range of positions when it moves with the prompt (infix)."""
    common = r.common_trigger_positions()
    if common:
        for edge in (common[0] - 0.5, common[-1] + 0.5):
            fig.add_vline(x=edge, line={"dash": "dot", "color": "black", "width": 1}, row=row, col=col)
            if both_axes:
                fig.add_hline(y=edge, line={"dash": "dot", "color": "black", "width": 1}, row=row, col=col)
        return
    pos = r.trigger_positions[r.trigger_positions >= 0]
    lo, hi = int(pos.min()) - 0.5, int(pos.max()) + 0.5
    fig.add_vrect(x0=lo, x1=hi, fillcolor="gray", opacity=0.15, line={"width": 0}, row=row, col=col)
    if both_axes:
        fig.add_hrect(y0=lo, y1=hi, fillcolor="gray", opacity=0.15, line={"width": 0}, row=row, col=col)


def fig3(folder: Path) -> go.Figure:
    pairs = _saved_pairs(folder)
    zmax = max(float(r.delta_raw.abs().max()) for r in pairs.values())
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=[_panel_title(m, p) for m, p in PANELS],
        horizontal_spacing=0.1,
        vertical_spacing=0.1,
    )
    for i, (key, r) in enumerate((k, pairs.get(k)) for k in PANELS):
        if r is None:
            continue
        row, col = i // 2 + 1, i % 2 + 1
        fig.add_heatmap(
            z=np.round(r.delta_raw.numpy(), 5),
            coloraxis="coloraxis",
            row=row,
            col=col,
            hovertemplate="query %{y}, key %{x}<br>ΔA = %{z:.4f}<extra></extra>",
        )
        _mark_trigger(fig, r, row, col, both_axes=True)
        edge = [-0.5, r.size - 0.5]  # the map's extent: trigger marks past it must not widen the axes
        fig.update_yaxes(range=edge[::-1], title="query position" if col == 1 else None, row=row, col=col)
        fig.update_xaxes(range=edge, title="key position" if row == 2 else None, row=row, col=col)
    layer = next(iter(pairs.values())).layer
    return fig.update_layout(
        title=f"Fig. 3: ΔA = A(D_p) − A(D_f) at layer {layer}, mean over heads and samples "
        "(raw positions; trigger marked)",
        coloraxis={"colorscale": "RdBu_r", "cmid": 0, "cmin": -zmax, "cmax": zmax, "colorbar": {"title": "ΔA"}},
        width=1000,
        height=920,
    )


def fig3_heads(folder: Path) -> go.Figure | None:
    """Fig. 3 per head: one row per model / placement panel of Fig. 3, one column per head."""
    table = folder / "delta_attention_heads.parquet"
    if not table.is_file():
        return None
    t = pd.read_parquet(table)
    panels = [(m, p) for m, p in PANELS if ((t["model"] == m) & (t["placement"] == p)).any()]
    n_heads = int(t["head"].max()) + 1
    zmax = float(t["delta"].abs().max())
    fig = make_subplots(
        rows=len(panels),
        cols=n_heads,
        horizontal_spacing=0.01,
        vertical_spacing=0.04,
        row_titles=[_panel_title(m, p) for m, p in panels],
        column_titles=[f"head {h}" for h in range(n_heads)],
    )
    for row, (m, p) in enumerate(panels, start=1):
        for head, g in t[(t["model"] == m) & (t["placement"] == p)].groupby("head"):
            z = g.pivot(index="query", columns="key", values="delta").to_numpy()
            fig.add_heatmap(
                z=np.round(z, 5),
                coloraxis="coloraxis",
                row=row,
                col=int(head) + 1,
                hovertemplate=f"head {head}<br>query %{{y}}, key %{{x}}<br>ΔA = %{{z:.4f}}<extra></extra>",
            )
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    layer = next(iter(_saved_pairs(folder).values())).layer
    return fig.update_layout(
        title=f"Fig. 3 per head: ΔA = A(D_p) − A(D_f) at layer {layer}, mean over samples (raw positions)",
        coloraxis={"colorscale": "RdBu_r", "cmid": 0, "cmin": -zmax, "cmax": zmax, "colorbar": {"title": "ΔA"}},
        width=max(900, 170 * n_heads),
        height=200 + 190 * len(panels),
    )


def fig4(folder: Path) -> go.Figure:
    pairs = _saved_pairs(folder)
    table = pd.read_parquet(folder / "logits.parquet")
    fig = make_subplots(rows=2, cols=2, subplot_titles=[_panel_title(m, p) for m, p in PANELS], shared_yaxes=True)
    for i, (m, p) in enumerate(PANELS):
        if (m, p) not in pairs:
            continue
        row, col = i // 2 + 1, i % 2 + 1
        panel = position_logits_figure(table[(table["model"] == m) & (table["placement"] == p)])
        for trace in panel.data:
            fig.add_trace(
                trace.update(showlegend=trace.showlegend is not False and i == 0, legendgroup=trace.name),
                row=row,
                col=col,
            )
        _mark_trigger(fig, pairs[m, p], row, col, both_axes=False)
        fig.update_xaxes(title="token position" if row == 2 else None, row=row, col=col)
        fig.update_yaxes(title="true-token logit" if col == 1 else None, row=row, col=col)
    return fig.update_layout(
        title="Fig. 4: true-next-token logit per position, D_f (forget) vs D_p (poisoned), mean ± std",
        width=1100,
        height=760,
    )


def fig5(folder: Path) -> go.Figure:
    variants = [
        (v, t)
        for v, t in (("vanilla", "θ_b vanilla (Eq. 4)"), ("vn", "θ_b value-norm aligned (Eq. 7)"))
        if (folder / f"correlation_{v}.json").is_file()
    ]
    results = {v: load_result(folder, f"correlation_{v}", NormCorrelation) for v, _ in variants}
    fig = make_subplots(rows=1, cols=len(variants), subplot_titles=[t for _, t in variants], shared_yaxes=True)
    for col, (v, _) in enumerate(variants, start=1):
        for color, trace in zip(
            POSITION_COLORS * 4, norm_correlation_bars(results[v].table).data
        ):  # same colour per position in both panels
            fig.add_trace(trace.update(showlegend=col == 1, legendgroup=trace.name, marker_color=color), row=1, col=col)
    low = min(0.0, *(float(r.table["ci_low"].min()) for r in results.values()))
    layer = next(iter(results.values())).layer
    fig.update_yaxes(range=[low, 1.05], title="Pearson r", row=1, col=1)
    positions = sorted(next(iter(results.values())).table["position"].unique().tolist())
    fig.add_annotation(
        text=f"positions {positions}: where ‖v‖ varies across samples in every data set "
        "(BOS and shared prefixes left out)",
        xref="paper",
        yref="paper",
        x=0,
        y=-0.18,
        showarrow=False,
        font={"size": 11},
    )
    return fig.update_layout(
        title=f"Fig. 5: sink value-norm correlation at layer {layer} (95% bootstrap CI over samples)",
        barmode="group",
        width=1000,
        height=500,
        margin={"b": 90},
    )


# ---- tables ----------------------------------------------------------------------------------
def table1(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 layout: θ_o, NPO, RMU, NPO-Backdoor (prefix, value-norm aligned, seed
    mean; vanilla if the study has no aligned runs), RMU-Backdoor."""
    b = backdoor_rows(df)
    b = b[b["placement"] == "prefix"]
    npo_b, label = (b[b["vn"]], "NPO-Backdoor") if b["vn"].any() else (b, "NPO-Backdoor (vanilla)")
    refs = references(df)
    parts = [
        ("θ_o", refs[refs["method"] == ""]),
        ("NPO", refs[refs["method"] == "npo"]),
        ("RMU", refs[refs["method"] == "rmu"]),
        (label, npo_b),
        ("RMU-Backdoor", backdoor_rows(df, "rmu")),
    ]
    rows = [seed_stats(part.assign(row=name), ["row"]) for name, part in parts if not part.empty]
    return pd.concat(rows, ignore_index=True).rename(columns={"row": "model"})


def table1_display(t: pd.DataFrame) -> pd.DataFrame:
    """:func:`table1` as the paper prints it: one column per metric, "mean ± std" over seeds."""
    heads = ("UE KM ↓", "UE VM ↓", "BE KM ↑", "BE VM ↑", "UT KM ↑", "gain KM", "gain VM")
    cell = lambda r, m: f"{r[m]:.2f}" + (f" ± {r[m + '_std']:.2f}" if r["n_seeds"] > 1 else "")  # noqa: E731
    rows = [
        {"model": r["model"], **{h: cell(r, m) for h, m in zip(heads, METRICS)}, "seeds": r["n_seeds"]}
        for _, r in t.iterrows()
    ]
    return pd.DataFrame(rows)


def table1_title(df: pd.DataFrame) -> str:
    trigger = main_trigger([ModelRow.from_table(r) for r in df.to_dict("records")]) or DEFAULT_TRIGGER
    return (
        f"Table 1 (embedded): UE / BE / UT, prefix trigger “{trigger}”; BE on held-out items, "
        "gain = BE − UE on the same items; ± sample std over seeds (ddof 1)"
    )


# ---- building and writing --------------------------------------------------------------------
def build_figures(study_dir: Path, log: Log = print) -> dict[str, go.Figure]:
    """Every figure the study's results allow, by file stem; absent inputs are logged and skipped."""
    study_dir = Path(study_dir)
    df, folder = read_table(study_dir), StudyLayout(study_dir).analysis
    figs = {"fig2_ue_be": fig2(df, "ue_knowmem"), "fig2_ut_be": fig2(df, "ut_knowmem")}
    if (folder / "summary.json").is_file():
        figs |= {
            "fig3_delta_attention": fig3(folder),
            "fig4_logits": fig4(folder),
            "fig5_value_norm_correlation": fig5(folder),
        }
        heads = fig3_heads(folder)
        if heads is None:
            log(f"figures: fig3_heads skipped: {folder} has no per-head ΔA (an analysis from an older sinkprobe)")
        else:
            figs["fig3_heads"] = heads
    else:
        log(f"figures: Fig. 3-5 skipped: no finished analysis in {folder} (run analyse_study first)")
    for stem, make, why in (
        ("figA1_poison_ratio", fig_a1, "no reduced-ρ (rho05) NPO-Backdoor rows"),
        ("figA2_trigger_patterns", fig_a2, "no rows with the triggers “!!!!!” or “step-by-step”"),
    ):
        fig = make(df)
        if fig is None:
            log(f"figures: {stem} skipped: the table has {why}")
        else:
            figs[stem] = fig
    return figs


def find_browser() -> str | None:
    """The Chrome/Chromium kaleido would use (``BROWSER_PATH``, then PATH and the usual install
    places, then kaleido's own download), or None."""
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return None
    path = Chromium.find_browser(skip_local=False)
    return path if path and os.access(path, os.X_OK) else None


def write_pngs(figs: dict[Path, go.Figure], log: Log = print) -> list[Path]:
    """Static PNGs through kaleido in one browser session; skipped (logged, never raised) when
    kaleido or a browser is missing or the export fails."""
    try:
        import kaleido
    except ImportError:
        log("figures: PNGs skipped: kaleido is not installed (pip install 'kaleido>=1'); the HTML figures are written")
        return []
    if find_browser() is None:
        log(
            "figures: PNGs skipped: no Chrome/Chromium found (apt-get install chromium, or set BROWSER_PATH); "
            "the HTML figures are written"
        )
        return []
    tmp = {path: path.with_name(f".{path.stem}.tmp.png") for path in figs}
    specs = [
        {
            "fig": fig,
            "path": tmp[path],
            "opts": {
                "format": "png",
                "scale": PNG_SCALE,
                "width": fig.layout.width or 800,
                "height": fig.layout.height or 560,
            },
        }
        for path, fig in figs.items()
    ]
    try:
        # mathjax off: kaleido would otherwise load it from a CDN; plotly.js comes from the plotly package
        kaleido.write_fig_from_object_sync(specs, kopts={"mathjax": False})
    except Exception as e:  # any browser failure costs the PNGs only, never the study
        log(f"figures: PNGs skipped: the browser export failed ({type(e).__name__}: {e}); the HTML figures are written")
        for t in tmp.values():
            t.unlink(missing_ok=True)
        return []
    for path, t in tmp.items():
        os.replace(t, path)
    return list(figs)


def make_figures(study_dir: Path, out: Path, log: Log = print) -> list[Path]:
    """Write every figure (HTML, and PNG when a browser is found), ``table1.{csv,md}`` and copies of
    ``tableA4.{csv,md}``, ``table2.{csv,md}``, ``claims.{csv,md}`` and θ_o's run card (``original_model.json``) to
    ``out``; returns the written paths. Reads saved results only (the weights need not be there)."""
    study_dir, out = Path(study_dir), Path(out)
    figs = build_figures(study_dir, log)
    # One local copy of plotly.js beside the figures (no network; ~4 MB once, not per figure).
    atomic_write_text(out / "plotly.min.js", plotly.offline.get_plotlyjs())
    written = [out / "plotly.min.js"]
    for stem, fig in figs.items():
        atomic_write_text(out / f"{stem}.html", fig.to_html(include_plotlyjs="plotly.min.js", full_html=True))
        written.append(out / f"{stem}.html")
    written += write_pngs({out / f"{stem}.png": fig for stem, fig in figs.items()}, log)
    df = read_table(study_dir)
    t1 = table1(df)
    written += write_csv_md(t1, out / "table1", table1_title(df), shown=table1_display(t1).astype(str))
    copies = {
        StudyLayout(study_dir).result(f"{t}.{ext}"): out / f"{t}.{ext}"
        for t in ("tableA4", "table2", "claims")
        for ext in ("csv", "md")
    }
    for src, dst in copies.items():
        if src.is_file() and src.resolve() != dst.resolve():
            atomic_write_text(dst, src.read_text(encoding="utf-8"))
            written.append(dst)
    if card := read_run_card(StudyLayout(study_dir).original):
        # θ_o's card, less the folder its base was unpacked to on the machine that trained it:
        # the copy is shared, and base + base_identity name the base anywhere
        atomic_write_json(out / "original_model.json", {k: v for k, v in card.items() if k != "base_folder"})
        written.append(out / "original_model.json")
    log(f"figures: {len(figs)} figures and tables written to {out}")
    return written
