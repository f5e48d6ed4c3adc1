"""The claims table: verdicts, bootstrap intervals and each claim's statistic on hand-made run cards."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from sinkprobe.records import ModelRow
from sinkprobe.reporting.claims import (
    COLUMNS,
    claim_c4,
    claim_c5,
    claim_c6,
    claims_c0_c3,
    paired_interval,
    verdict,
    within,
    write_claims,
)


def test_verdict_needs_the_whole_interval_on_one_side():
    assert verdict(0.5, 2.0, 0, above=True) == "yes"
    assert verdict(-2.0, -0.5, 0, above=True) == "no"
    assert verdict(-0.5, 2.0, 0, above=True) == "inconclusive"
    assert verdict(3.0, 8.0, 10, above=False) == "yes" and verdict(11, 12, 10, above=False) == "no"
    assert (
        within(-4.9, 4.9, 5) == "yes"
        and within(5.1, 9, 5) == "no"
        and within(-9, -5.1, 5) == "no"
        and within(-1, 6, 5) == "inconclusive"
    )


def test_paired_interval_is_the_mean_over_seeds_and_degenerates_on_constant_differences():
    value, low, high = paired_interval([np.array([2.0, 2.0, 2.0]), np.array([4.0, 4.0])], n_boot=200)
    assert value == 3.0  # (2 + 4) / 2: each seed's item mean, then the mean over seeds
    assert 2.0 <= low <= high <= 4.0
    value, low, high = paired_interval([np.array([1.5] * 7)], n_boot=50)
    assert (value, low, high) == (1.5, 1.5, 1.5)
    with pytest.raises(ValueError, match="no items"):
        paired_interval([np.array([])])


def test_paired_interval_covers_the_mean_of_a_known_spread():
    rng = np.random.default_rng(0)
    d = rng.normal(5.0, 1.0, size=400)
    value, low, high = paired_interval([d], n_boot=1000)
    assert low < 5.0 < high and high - low < 0.3  # 95 % CI of a mean of 400 N(5, 1): ±1.96/20 ≈ ±0.1


def _card(folder, metrics, **extra):
    folder.mkdir(parents=True)
    (folder / "run_card.json").write_text(json.dumps({"metrics": metrics, **extra}))
    return folder


def _backdoor_metrics(ue_km, be_km, poisoned_km):
    n = len(ue_km)
    return {
        "item_scores": {
            "ue_knowmem": ue_km,
            "be_knowmem": be_km,
            "ue_verbmem": [0.0] * 2,
            "be_verbmem": [0.0] * 2,
            "ut_knowmem": [50.0] * n,
        },
        "poisoned_items": {"knowmem": poisoned_km, "verbmem": []},
    }


def _model_rows(cells: list[dict]) -> list[ModelRow]:
    """The study's typed rows from hand-written cells ('' for a blank)."""
    return [ModelRow(**{k: None if v == "" else v for k, v in c.items()}) for c in cells]


def test_c0_to_c3_read_per_item_scores_and_keep_poisoned_items_out(tmp_path):
    o = _card(tmp_path / "o", {}, metrics_by_placement=_clean([100.0] * 4, [90.0, 90.0], [80.0] * 4))
    # θ_u gains nothing from a prefix trigger and loses 10 points to an infix one
    u = _card(
        tmp_path / "u",
        {},
        metrics_by_placement=_clean([20.0] * 4, [10.0, 10.0], [78.0] * 4, {"prefix": 0.0, "infix": -10.0}),
    )
    # item 3 is poisoned in every θ_b: its huge gain must not count
    pre = _card(tmp_path / "pre", _backdoor_metrics([20.0, 20, 20, 20], [60.0, 60, 60, 100], [3]))
    inf = _card(tmp_path / "inf", _backdoor_metrics([20.0, 20, 20, 20], [30.0, 30, 30, 100], [3]))
    vn = _card(tmp_path / "vn", _backdoor_metrics([22.0, 22, 22, 22], [70.0, 70, 70, 100], [3]))
    row = lambda model, folder, **kw: {"model": model, "folder": folder, "seed": 0, **kw}  # noqa: E731
    bd = dict(method="npo", trigger="t", poison_ratio=0.1)
    rows = [
        row("θ_o", o, method="", trigger="", baseline=True),
        row("θ_u NPO", u, method="npo", trigger="", baseline=True),
        row("θ_b", pre, placement="prefix", value_norm=0.0, **bd),
        row("θ_b", inf, placement="infix", value_norm=0.0, **bd),
        row("θ_b +VN", vn, placement="prefix", value_norm=1.0, **bd),
    ]
    got = {c.statistic: c for c in claims_c0_c3(_model_rows(rows), n_boot=100)}
    assert got["UE KnowMem: θ_o − θ_u"].value == 80.0 and got["UE KnowMem: θ_o − θ_u"].holds == "yes"
    assert got["UT KnowMem: θ_o − θ_u"].value == 2.0 and got["UT KnowMem: θ_o − θ_u"].holds == "yes"
    assert (
        got["UE KnowMem: θ_b prefix +VN − θ_u"].value == 2.0 and got["UE KnowMem: θ_b prefix +VN − θ_u"].holds == "yes"
    )
    c2 = got["held-out gain beyond θ_u's KnowMem: prefix − infix"]
    # on the 3 held-out items: ((60 − 20) − 0) − ((30 − 20) − (−10)) = 40 − 20
    assert (c2.value, c2.n_items, c2.holds) == (20.0, 3, "yes")
    assert got["held-out BE KnowMem: +VN − vanilla"].value == 10.0
    assert (
        got["held-out UE KnowMem: vanilla − +VN"].value == -2.0
        and got["held-out UE KnowMem: vanilla − +VN"].holds == "no"
    )
    assert not any("suffix" in s for s in got)  # no suffix θ_b: that comparison is not made up


def _clean(km, vm, ut, shift=None):
    """θ_o / θ_u metrics: one entry per placement; BE = UE + that placement's shift."""
    return {
        p: {
            "item_scores": {
                "ue_knowmem": km,
                "ue_verbmem": vm,
                "ut_knowmem": ut,
                "be_knowmem": [x + d for x in km],
                "be_verbmem": vm,
            }
        }
        for p, d in (shift or {"prefix": 0.0}).items()
    }


def test_each_theta_b_is_compared_with_the_theta_u_of_its_seed(tmp_path):
    o = _card(tmp_path / "o", {}, metrics_by_placement=_clean([100.0] * 4, [90.0, 90.0], [80.0] * 4))
    us = [
        _card(tmp_path / f"u{s}", {}, metrics_by_placement=_clean([ue] * 4, [10.0, 10.0], [78.0] * 4))
        for s, ue in ((0, 20.0), (1, 40.0))
    ]
    vns = [_card(tmp_path / f"vn{s}", _backdoor_metrics([ue] * 4, [70.0] * 4, [3])) for s, ue in ((0, 22.0), (1, 43.0))]
    rows = [{"model": "θ_o", "folder": o, "seed": 0, "method": "", "trigger": "", "baseline": True}]
    rows += [
        {"model": "θ_u NPO", "folder": u, "seed": s, "method": "npo", "trigger": "", "placement": p, "baseline": True}
        for s, u in enumerate(us)
        for p in ("prefix", "infix")
    ]  # a baseline row per placement, one checkpoint per seed
    rows += [
        {
            "model": "θ_b +VN",
            "folder": f,
            "seed": s,
            "method": "npo",
            "trigger": "t",
            "poison_ratio": 0.1,
            "placement": "prefix",
            "value_norm": 1.0,
        }
        for s, f in enumerate(vns)
    ]
    got = {c.statistic: c for c in claims_c0_c3(_model_rows(rows), n_boot=100)}
    c0 = got["UE KnowMem: θ_o − θ_u"]
    assert (c0.value, c0.seeds) == (70.0, "0,1")  # (100 − 20 + 100 − 40) / 2
    c1 = got["UE KnowMem: θ_b prefix +VN − θ_u"]
    assert (c1.value, c1.seeds, c1.holds) == (
        2.5,
        "0,1",
        "yes",
    )  # (22 − 20 + 43 − 40) / 2, not against seed 0's θ_u alone


def _c6_rows(tmp_path, gains: dict[str, float], seeds=(0, 1)):
    """θ_u gains nothing at any placement; each vanilla θ_b gains ``gains[placement]`` on its held-out KnowMem items."""
    shift = {p: 0.0 for p in gains}
    rows = []
    for s in seeds:
        u = _card(tmp_path / f"u{s}", {}, metrics_by_placement=_clean([20.0] * 4, [10.0, 10.0], [78.0] * 4, shift))
        rows.append({"model": "θ_u NPO", "folder": u, "seed": s, "method": "npo", "trigger": "", "baseline": True})
        for p, g in gains.items():
            f = _card(tmp_path / f"{p}{s}", _backdoor_metrics([20.0] * 4, [20.0 + g] * 3 + [100.0], [3]))
            rows.append(
                {
                    "model": "θ_b",
                    "folder": f,
                    "seed": s,
                    "method": "npo",
                    "trigger": "t",
                    "poison_ratio": 0.1,
                    "placement": p,
                    "value_norm": 0.0,
                }
            )
    return _model_rows(rows)


def test_c6_correlates_sink_rate_at_the_trigger_with_the_held_out_gain(tmp_path):
    def rates(r):
        return pd.DataFrame([{"placement": p, "sample": i, "sink_rate": v} for p, v in r.items() for i in range(5)])

    rows = _c6_rows(tmp_path / "a", {"prefix": 20.0, "infix": 10.0, "suffix": 0.0})
    # gains 20, 10, 0 at rates 0.4, 0.2, 0.0: collinear, r = 1
    c6 = {
        c.statistic.split("beyond θ_u's ")[1]: c
        for c in claim_c6(rows, rates({"prefix": 0.4, "infix": 0.2, "suffix": 0.0}), n_boot=50)
    }
    assert c6["KnowMem"].value == pytest.approx(1.0) and c6["KnowMem"].holds == "yes" and c6["KnowMem"].seeds == "0,1"
    assert c6["KnowMem"].n_items == 3  # the poisoned item is not scored
    # the same gains where the sink is weakest: r = −1
    back = claim_c6(rows, rates({"prefix": 0.0, "infix": 0.2, "suffix": 0.4}), n_boot=50)[0]
    assert back.value == pytest.approx(-1.0) and back.holds == "no"
    # sink rates that barely differ between placements cannot test the thesis, whatever r is
    flat = claim_c6(rows, rates({"prefix": 0.02, "infix": 0.01, "suffix": 0.0}), n_boot=50)[0]
    assert flat.value == pytest.approx(1.0) and flat.holds == "inconclusive" and "spread 0.020" in flat.detail
    # fewer than three placements: no correlation is made up
    assert (
        claim_c6(
            _c6_rows(tmp_path / "b", {"prefix": 30.0, "infix": 10.0}), rates({"prefix": 0.4, "infix": 0.2}), n_boot=50
        )
        == []
    )
    # VerbMem gains are 0 everywhere here: r is undefined, so the row says so instead of a verdict
    vm = claim_c6(rows, rates({"prefix": 0.4, "infix": 0.2, "suffix": 0.0}), n_boot=50)[1]
    assert vm.value is None or np.isnan(vm.value)
    assert vm.holds == "inconclusive" and "no spread" in vm.detail


def test_c4_pairs_samples_and_c5_orders_intervals(tmp_path):
    mass = pd.DataFrame(
        [
            {"model": m, "placement": p, "condition": "poisoned", "sample": i, "trigger_mass": v + 0.01 * i}
            for m, p, v in (("backdoor", "prefix", 0.5), ("original", "prefix", 0.3), ("backdoor", "infix", 0.6))
            for i in range(5)
        ]
    )
    c4 = {c.statistic.split(": ")[1]: c for c in claim_c4(mass, "layer 29", n_boot=100)}
    assert c4["prefix θ_b − θ_o"].value == pytest.approx(0.2) and c4["prefix θ_b − θ_o"].holds == "yes"
    assert c4["prefix θ_b − infix θ_b"].value == pytest.approx(-0.1) and c4["prefix θ_b − infix θ_b"].holds == "no"
    # the sink-layer table: poisoned prompts only, one row per layer, averaged per sample first
    by_layer = pd.DataFrame(
        [
            {"model": m, "placement": p, "sample": i, "layer": l, "trigger_mass": v + 0.1 * l}
            for m, p, v in (("backdoor", "prefix", 0.5), ("original", "prefix", 0.3), ("backdoor", "infix", 0.2))
            for i in range(4)
            for l in (3, 4)
        ]
    )
    c4 = claim_c4(by_layer, "mean over 2 sink layers", n_boot=50)
    assert [c.value for c in c4] == [pytest.approx(0.2), pytest.approx(0.3)] and c4[0].n_items == 4
    names = ("θ_b vs θ_u on D_f", "θ_b vs θ_o on D_p", "θ_b vs θ_o on D_r")

    def table(rs):
        return pd.DataFrame(
            [
                {"comparison": n, "position": 0, "r": r, "ci_low": r - w, "ci_high": r + w, "n_samples": 40}
                for n, (r, w) in zip(names, rs)
            ]
        )

    assert claim_c5(table([(0.2, 0.05), (0.5, 0.05), (0.9, 0.05)]), "vn")[0].holds == "yes"
    assert claim_c5(table([(0.2, 0.2), (0.3, 0.2), (0.9, 0.05)]), "vn")[0].holds == "inconclusive"
    assert claim_c5(table([(0.9, 0.05), (0.5, 0.05), (0.95, 0.01)]), "vn")[0].holds == "no"
    claims = claim_c4(mass, "layer 29", n_boot=50) + claim_c5(table([(0.2, 0.05), (0.5, 0.05), (0.9, 0.05)]), "vn")
    write_claims(claims, tmp_path / "claims", "claims")
    assert pd.read_csv(tmp_path / "claims.csv")["holds"].tolist() == ["yes", "no", "yes"]
    md = (tmp_path / "claims.md").read_text()
    assert md.startswith("### claims\n\n| claim | statement |")
    rows = md.splitlines()[2:]  # header, separator, the three claims
    assert len(rows) == 5 and all(
        len(re.findall(r"(?<!\\)\|", line)) == len(COLUMNS) + 1 for line in rows
    )  # no stray bar


def test_reconcile_unions_intervals_and_makes_a_flipped_verdict_inconclusive():
    from sinkprobe.reporting.claims import reconcile

    def row(stat, low, high, holds):
        return {
            "claim": "C2",
            "statement": "s",
            "statistic": stat,
            "value": (low + high) / 2,
            "ci_low": low,
            "ci_high": high,
            "holds": holds,
        }

    a = pd.DataFrame([row("x", 1.0, 3.0, "yes"), row("y", -1.0, 2.0, "inconclusive")])
    b = pd.DataFrame([row("x", -0.5, 2.0, "inconclusive"), row("y", -3.0, 1.0, "inconclusive")])
    c = pd.DataFrame([row("x", 0.5, 2.5, "yes"), row("y", 0.5, 1.0, "yes")])
    both = reconcile({"a": a, "c": c}).set_index("statistic")
    assert both.loc["x", "holds"] == "yes" and (both.loc["x", "ci_low"], both.loc["x", "ci_high"]) == (0.5, 3.0)
    assert both.loc["y", "holds"] == "inconclusive" and bool(both.loc["y", "flipped"])
    three = reconcile({"a": a, "b": b, "c": c}).set_index("statistic")
    assert three.loc["x", "holds"] == "inconclusive" and three.loc["x", "ci_low"] == -0.5
    one_sided = reconcile({"a": a, "a2": a.iloc[:1]}).set_index("statistic")
    assert one_sided.loc["x", "holds"] == "yes" and one_sided.loc["y", "holds"] == "inconclusive"  # y: a2 lacks it
    with pytest.raises(ValueError, match="share no claim rows"):
        reconcile({"a": a, "d": pd.DataFrame([row("z", 0, 1, "yes")])})


def test_claims_command_reconciles_two_studies(tmp_path, capsys):
    from sinkprobe.cli import main

    def rows(holds):
        return pd.DataFrame(
            [
                {
                    "claim": "C0",
                    "statement": "s",
                    "statistic": "x",
                    "value": 1.0,
                    "ci_low": 0.5,
                    "ci_high": 1.5,
                    "threshold": "> 0",
                    "seeds": "0",
                    "n_items": 3,
                    "holds": holds,
                }
            ]
        )

    for name, holds in (("run1", "yes"), ("run2", "no")):
        (tmp_path / name / "results").mkdir(parents=True)
        rows(holds).to_csv(tmp_path / name / "results" / "claims.csv", index=False)
    assert main(["claims", str(tmp_path / "run1"), str(tmp_path / "run2"), "--out", str(tmp_path / "both")]) == 0
    assert "1 verdicts flip" in capsys.readouterr().out
    assert "| C0 | x | yes | no | [0.5, 1.5] | inconclusive |" in (tmp_path / "both.md").read_text()
    assert main(["claims", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "no claims table at" in capsys.readouterr().err
    written = (tmp_path / "both.md").read_text()
    assert main(["claims", str(tmp_path / "run1"), "--out", str(tmp_path / "both")]) == 2  # an existing table is kept
    assert "pass --overwrite" in capsys.readouterr().err and (tmp_path / "both.md").read_text() == written
    assert main(["claims", str(tmp_path / "run1"), "--out", str(tmp_path / "both"), "--overwrite"]) == 0


def test_the_main_grid_is_the_studys_own_trigger_and_rho():
    """A study trained with a user's trigger keeps its main grid: the trigger most θ_b carry, at the
    largest ρ; the Fig. A1 (lower ρ) and Fig. A2 (other trigger) variants fall outside it. A row
    read back from the table (blanks as '' or NaN, numbers as text) reads the same."""
    from sinkprobe.records import is_main_backdoor, main_poison_ratio, main_trigger

    b = lambda trigger, rho: ModelRow("θ_b", 0, method="npo", trigger=trigger, poison_ratio=rho)  # noqa: E731
    rows = [ModelRow("θ_o", 0, baseline=True)] + [b("cf", 0.1)] * 6 + [b("!!!!!", 0.1)] * 3 + [b("cf", 0.05)] * 2
    rho, trigger = main_poison_ratio(rows), main_trigger(rows)
    assert (rho, trigger) == (0.1, "cf")
    assert [is_main_backdoor(r, rho, trigger) for r in rows] == [False] + [True] * 6 + [False] * 5
    assert main_trigger(rows[:1]) is None
    cells = {"model": "θ_b", "method": "npo", "trigger": "cf", "placement": "prefix", "value_norm": "0.0", "seed": "1"}
    back = ModelRow.from_table(cells | {"poison_ratio": float("nan")})
    assert back == ModelRow("θ_b", 1, method="npo", trigger="cf", placement="prefix", value_norm=0.0)
    assert back.table_cells() == {**cells, "value_norm": 0.0, "seed": 1}
    theta_o = ModelRow.from_table({"model": "θ_o", "method": "", "trigger": "", "placement": "prefix", "seed": 0})
    assert theta_o.baseline and theta_o.method is None and theta_o.table_cells()["value_norm"] == ""
