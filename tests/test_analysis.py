"""Analysis core: hand-computed values for the pure functions, invariances for the runners."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from test_hooked import sample_ids, tiny_models  # noqa: F401  (fixture)

from sinkprobe.analysis import (
    KEY_CLASSES,
    NormCorrelation,
    PairAnalysis,
    PoisonedPairs,
    SinkReport,
    analyse_pairs,
    attention_by_key_class,
    attention_patterns,
    bootstrap_pearson,
    collect_value_norms,
    describe_run,
    detect_sinks,
    key_class_shares,
    load_result,
    load_run,
    norm_correlation,
    paper_comparisons,
    position_stats,
    save_result,
    sink_rate_at,
    sink_scores,
    sink_set,
    true_token_scores,
)
from sinkprobe.analysis import attention as att
from sinkprobe.analysis.batching import content_first, content_offsets
from sinkprobe.analysis.key_classes import delimiter_ids, key_class_map
from sinkprobe.analysis.sinks import head_sink_share
from sinkprobe.data.batching import pad_batch
from sinkprobe.data.tokenizer import train_tokenizer
from sinkprobe.models.hooked import Trio, open_bridge, open_trio

TRIGGER = [7, 8]


def poisoned_pairs(n: int, at: int = 1, seed: int = 0) -> PoisonedPairs:
    clean = sample_ids(n, 6, 12, seed)
    poisoned = [c[:at] + TRIGGER + c[at:] for c in clean]
    return PoisonedPairs(clean, poisoned, [list(range(at, at + len(TRIGGER)))] * n)


@pytest.fixture(scope="module")
def bridges(tiny_models):  # noqa: F811
    return {f: open_bridge(p) for f, p in tiny_models.items()}


# --- pure functions, hand-computed ---------------------------------------------------------


def test_pad_batch_and_content_first_realign_left_padding():
    ids, mask = pad_batch([[1, 5, 6], [1, 7]], pad_id=0, side="left")
    assert ids.tolist() == [[1, 5, 6], [0, 1, 7]] and mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    off = content_offsets(mask)
    assert content_first(ids, off, (1,)).tolist() == [[1, 5, 6], [1, 7, 0]]
    with pytest.raises(ValueError, match="empty token sequence"):
        pad_batch([[1], []], 0)


def test_sink_scores_on_a_hand_made_pattern():
    # one head, 3 real tokens + 1 pad; rows are queries
    A = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.6, 0.4, 0.0, 0.0], [0.5, 0.2, 0.3, 0.0], [0.25, 0.25, 0.25, 0.25]])[
        None, None
    ]
    mask = torch.tensor([[1, 1, 1, 0]])
    alpha = sink_scores(A, mask)[0, 0]
    # α(0) = (1 + .6 + .5)/3, α(1) = (.4 + .2)/2, α(2) = .3/1, key 3 is padding; the pad query is ignored
    assert torch.allclose(alpha[:3], torch.tensor([0.7, 0.3, 0.3]))
    assert alpha[3].isnan()


def test_sink_share_rate_and_set():
    alpha = torch.tensor([[[0.7, 0.31, 0.1], [0.2, 0.5, 0.29]]])  # [layer=1 head=2 key=3]
    share = head_sink_share(alpha, eps=0.3)
    assert share.tolist() == [[0.5, 1.0, 0.0]]
    assert sink_set(share, threshold=0.5) == [0, 1]
    assert sink_set(share, threshold=0.6) == [1]


def test_first_token_view_of_a_hand_made_report():
    alpha = torch.tensor([[[0.7, 0.1], [0.2, 0.5]], [[0.4, 0.3], [0.35, 0.0]]])  # [layer=2 head=2 key=2]
    report = SinkReport(
        alpha=alpha, rate=head_sink_share(alpha), n_samples=torch.tensor([3, 3]), layers=[0, 1], eps=0.3
    )
    view = report.first_token()
    assert view["sink_score_per_layer"] == [0.45, 0.375]  # (0.7 + 0.2) / 2, (0.4 + 0.35) / 2
    assert view["sink_score_per_head"] == [[0.7, 0.2], [0.4, 0.35]]
    assert view["sink_rate_per_layer"] == [0.5, 1.0] and view["sink_eps"] == 0.3


def test_content_alignment_and_trigger_mass_on_a_hand_made_map():
    # poisoned copy: BOS, T, T, c1, c2 (trigger at 1, 2); clean: BOS, c1, c2
    P = torch.tensor(
        [
            [1.0, 0, 0, 0, 0],
            [0.5, 0.5, 0, 0, 0],
            [0.2, 0.3, 0.5, 0, 0],
            [0.1, 0.2, 0.3, 0.4, 0],
            [0.1, 0.1, 0.1, 0.3, 0.4],
        ]
    )[None]
    C = torch.tensor([[1.0, 0, 0], [0.3, 0.7, 0], [0.2, 0.3, 0.5]])[None]
    keep = att.content_index([[1, 2]], torch.tensor([5]), 3)
    assert keep.tolist() == [[0, 3, 4]]
    assert torch.allclose(att.gather_square(P, keep)[0], torch.tensor([[1.0, 0, 0], [0.1, 0.4, 0], [0.1, 0.3, 0.4]]))
    trig = att.key_mask([[1, 2]], 5)
    mass = att.mass_on_keys(P, trig)  # [1 5]
    assert torch.allclose(mass[0], torch.tensor([0.0, 0.5, 0.8, 0.5, 0.2]))
    assert torch.allclose(att.mean_after(mass, torch.tensor([3]), torch.tensor([5])), torch.tensor([0.35]))
    clean_mass = att.mass_on_keys(C, att.key_mask([[1, 2]], 3))  # same indices in the clean copy
    assert att.mean_after(clean_mass, torch.tensor([3]), torch.tensor([3])).isnan().all()  # no query after


def test_true_token_scores_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]]])
    ids, mask = torch.tensor([[0, 2, 1]]), torch.tensor([[1, 1, 0]])
    logit, logprob = true_token_scores(logits, ids, mask)
    assert logit[0, 0] == 1.0 and logit[0, 1].isnan()
    assert torch.allclose(logprob[0, 0], torch.log_softmax(logits[0, 0], -1)[2])
    table = position_stats({"forget": (torch.tensor([[1.0, 2.0], [3.0, float("nan")]]),) * 2})
    assert table["n"].tolist() == [2, 1] and table["logit_mean"].tolist() == [2.0, 2.0]
    assert table["logit_std"].tolist() == [1.0, 0.0]


def test_pearson_equals_scipy_and_bootstrap_brackets_it():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    y = 0.6 * x + rng.normal(size=(40, 4))
    r, lo, hi = bootstrap_pearson(x, y, n_boot=500, seed=1)
    assert r == pytest.approx(scipy.stats.pearsonr(x.ravel(), y.ravel()).statistic, abs=1e-12)
    assert lo < r < hi
    assert bootstrap_pearson(x, y, n_boot=500, seed=1) == (r, lo, hi)
    norms = torch.from_numpy(np.stack([x, x], 1))  # [n pos=2 head]
    row = norm_correlation(norms, norms, position=1, n_boot=50)
    assert row["r"] == pytest.approx(1.0) and row["n_points"] == 160


def test_pairs_refuse_copies_that_are_not_the_clean_sample_plus_trigger():
    with pytest.raises(ValueError, match="sample 0"):
        PoisonedPairs([[1, 5, 6]], [[1, 7, 6, 5]], [[1]])


# --- runners on tiny models ----------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "mistral", "gpt2"])
def test_attention_rows_sum_to_one(bridges, family):
    for pattern in attention_patterns(bridges[family], sample_ids(4), [0, 1], per_head=True, batch_size=3):
        assert torch.allclose(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=1e-5)


def test_delta_attention_of_a_model_against_itself_is_exactly_zero(bridges):
    clean = sample_ids(5)
    r = analyse_pairs(bridges["mistral"], PoisonedPairs(clean, clean, [[]] * 5), batch_size=2)
    assert torch.equal(r.delta_raw, torch.zeros_like(r.delta_raw))
    assert torch.equal(r.delta_content, torch.zeros_like(r.delta_content))


def _assert_same(a, b, atol=1e-5):
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, torch.Tensor):
            assert torch.allclose(x, y, atol=atol, equal_nan=True), name
        else:
            assert x == y, name


@pytest.mark.parametrize("family", ["mistral", "gpt2"])
def test_padding_does_not_change_any_result(bridges, family):
    bridge, pairs = bridges[family], poisoned_pairs(5, at=3)
    one_by_one = analyse_pairs(bridge, pairs, batch_size=1)
    for side in ("right", "left"):
        _assert_same(analyse_pairs(bridge, pairs, batch_size=5, padding_side=side), one_by_one)
        _assert_same(
            detect_sinks(bridge, pairs.clean, batch_size=5, padding_side=side),
            detect_sinks(bridge, pairs.clean, batch_size=1),
        )


def test_pair_analysis_shapes_and_tables(bridges):
    r = analyse_pairs(bridges["llama"], poisoned_pairs(4), model="original")
    n, size = 4, min(len(c) for c in poisoned_pairs(4).clean)
    assert r.layer == 1 and r.size == size and r.delta_raw.shape == (size, size)
    assert r.trigger_rows.shape == (2, size) and r.trigger_mass.shape == (n, 2)
    assert r.norms_clean.shape[0] == n and r.norms_clean.shape[2] == 4
    assert r.common_trigger_positions() == [1, 2]
    table = r.logit_table()
    assert set(table["dataset"]) == {"forget", "poisoned"} and (table["model"] == "original").all()
    masses = r.trigger_mass_table()
    assert len(masses) == 2 * n and masses["trigger_mass"].between(0, 1).all()
    # the trigger columns are the poisoned map's attention on the trigger: between 0 and 1
    assert ((r.trigger_columns >= 0) & (r.trigger_columns <= 1)).all()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_trigger_mass_by_layer_equals_the_pair_analysis_at_each_layer(bridges, family):
    """Insight 1 at the sink layers from the same forward: each column equals the poisoned mass of
    the pair analysis read at that layer (the analysis layer's own column is that mass exactly)."""
    pairs = poisoned_pairs(5)
    r = analyse_pairs(bridges[family], pairs, 1, sink_layers=[0, 1], batch_size=2)
    assert r.trigger_mass_by_layer.shape == (5, 2) and r.sink_layers == [0, 1]
    assert torch.equal(r.trigger_mass_by_layer[:, 1], r.trigger_mass[:, 1])
    at_0 = analyse_pairs(bridges[family], pairs, 0, batch_size=2).trigger_mass[:, 1]
    torch.testing.assert_close(r.trigger_mass_by_layer[:, 0], at_0, atol=1e-6, rtol=0)
    assert not torch.allclose(r.trigger_mass_by_layer[:, 0], r.trigger_mass_by_layer[:, 1])
    assert analyse_pairs(bridges[family], pairs, batch_size=2).trigger_mass_by_layer.shape == (5, 0)


def test_sink_detection_finds_the_first_token(bridges):
    report = detect_sinks(bridges["llama"], sample_ids(6, 10, 14), eps=0.3)
    assert report.rate.shape == (2, 13) and report.alpha.shape == (2, 4, 13)
    assert report.rate[:, 0].min() > 0  # BOS sees every query: α(0) is large in at least some heads
    assert 0 in report.positions(threshold=float(report.rate[:, 0].mean()))
    assert set(report.rate_table().columns) == {"model", "layer", "key", "sink_rate", "n_samples"}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_per_head_delta_attention_averages_to_the_pair_analysis(bridges, family):
    r = analyse_pairs(bridges[family], poisoned_pairs(5), batch_size=2)
    per_head = r.delta_raw_per_head
    assert per_head.shape == (bridges[family].cfg.n_heads, r.size, r.size)
    assert torch.allclose(per_head.mean(0), r.delta_raw, atol=1e-6, equal_nan=True)
    assert not torch.allclose(per_head[0], per_head[1])  # the heads differ: it is not the mean repeated


def test_sink_rate_at_moving_keys_matches_detect_sinks(bridges):
    """At one fixed key for every sample, the per-sample rates average to detect_sinks' rate of that
    key (mean over layers); two keys average the two; a sample with no key gives NaN."""
    seqs = sample_ids(6, 10, 14)
    report = detect_sinks(bridges["llama"], seqs, eps=0.3)
    for key in (0, 3):
        rates = sink_rate_at(bridges["llama"], seqs, [[key]] * 6, eps=0.3, batch_size=4)
        assert rates.shape == (6,)
        assert rates.mean().item() == pytest.approx(report.rate[:, key].mean().item(), abs=1e-6)
    one = [detect_sinks(bridges["llama"], [s], eps=0.3).rate.mean(0) for s in seqs]  # [key] per sample
    both = sink_rate_at(bridges["llama"], seqs, [[0, 3]] * 5 + [[]], eps=0.3)
    assert torch.allclose(both[:5], torch.stack([(r[0] + r[3]) / 2 for r in one[:5]]), atol=1e-6)
    assert both[5].isnan()


def test_paper_comparisons_of_identical_models_correlate_perfectly(tiny_models, tmp_path):  # noqa: F811
    folder = tiny_models["mistral"]
    trio = open_trio(folder, folder, folder)
    data = {"forget": sample_ids(6), "poisoned": poisoned_pairs(6).poisoned, "retain": sample_ids(6, seed=3)}
    result = paper_comparisons(trio, data, positions=[0, 1], n_boot=100)
    assert len(result.table) == 6 and result.layer == 1
    assert np.allclose(result.table["r"], 1.0)
    save_result(result, tmp_path, "fig5", describe_run(trio._asdict(), n_samples=6))
    back = load_result(tmp_path, "fig5", NormCorrelation)
    pd.testing.assert_frame_equal(back.table, result.table)
    assert load_run(tmp_path, "fig5")["models"]["original"] == str(folder.resolve())


def test_paper_comparisons_share_the_norms_of_common_models(tiny_models):  # noqa: F811
    """Two θ_b against one θ_o / θ_u: with one cache the second call collects only its θ_b's norms
    (3 datasets), and its table equals an uncached call's."""
    o, u, b1, b2 = (open_bridge(tiny_models["llama"]) for _ in range(4))  # four bridge objects
    data = {"forget": sample_ids(6), "poisoned": poisoned_pairs(6).poisoned, "retain": sample_ids(6, seed=3)}
    cache: dict = {}
    paper_comparisons(Trio(o, u, b1), data, [0, 1], n_boot=50, norms_cache=cache)
    assert len(cache) == 6  # θ_b on three sets, θ_u on D_f, θ_o on D_p and D_r
    second = Trio(o, u, b2)
    shared = paper_comparisons(second, data, [0, 1], n_boot=50, norms_cache=cache)
    assert len(cache) == 9
    alone = paper_comparisons(second, data, [0, 1], n_boot=50)
    pd.testing.assert_frame_equal(shared.table, alone.table)


def test_results_round_trip_without_leftovers(bridges, tmp_path):
    bridge = bridges["gpt2"]
    pairs = poisoned_pairs(3)
    r = analyse_pairs(bridge, pairs, model="original")
    sinks = detect_sinks(bridge, pairs.clean, model="original")
    run = describe_run({"original": bridge}, layer=r.layer, n_samples=3)
    save_result(r, tmp_path, "pairs", run)
    save_result(sinks, tmp_path, "sinks", run)
    _assert_same(load_result(tmp_path, "pairs", PairAnalysis), r, atol=0)
    _assert_same(load_result(tmp_path, "sinks", SinkReport), sinks, atol=0)
    meta = json.loads((tmp_path / "pairs.json").read_text())
    assert meta["run"]["dtype"] == "torch.float32" and meta["run"]["layer"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(ValueError, match="SinkReport"):
        load_result(tmp_path, "sinks", PairAnalysis)


def test_value_norms_are_nan_past_each_sample_end(bridges):
    seqs = [[1, 5, 6], [1, 5, 6, 7, 8]]
    norms = collect_value_norms(bridges["mistral"], seqs)
    assert norms.shape == (2, 5, 4) and norms[0, 3:].isnan().all() and not norms[1].isnan().any()


# --- where attention goes: key classes ------------------------------------------------------


def test_key_class_shares_on_a_hand_made_pattern():
    # ids: BOS, ".", x, y, z; "." is a delimiter. Rows are queries 0..4 (lower-triangular).
    A = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [0.6, 0.4, 0.0, 0.0, 0.0],
            [0.5, 0.25, 0.25, 0.0, 0.0],  # key 1 is the previous token here, not a delimiter
            [0.1, 0.2, 0.3, 0.4, 0.0],
            [0.1, 0.1, 0.1, 0.3, 0.4],
        ]
    )[None]  # [head query key]
    classes = key_class_map([1, 9, 20, 21, 22], delimiters={9})
    assert classes[2].tolist() == [0, 2, 1, -1, -1] and classes[4].tolist() == [0, 3, 4, 2, 1]
    shares = key_class_shares(A, classes)[0]  # mean over queries 1..4
    expected = {"first": 1.3 / 4, "self": 1.45 / 4, "previous": 0.85 / 4, "delimiter": 0.3 / 4, "other": 0.1 / 4}
    assert shares.tolist() == pytest.approx([expected[c] for c in KEY_CLASSES])
    assert float(shares.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="≥ 2 tokens"):
        key_class_shares(A[..., :1, :1], classes[:1, :1])


def test_delimiter_ids_are_newlines_and_punctuation_only(tmp_path):
    tok = train_tokenizer(
        ["Question: who?\nAnswer: a raven.", "The miller walked past the mill. Once more: the mill!"] * 20,
        vocab_size=300,
    )
    delims = delimiter_ids(tok)
    for text in ["\n", ".", ":", "?"]:
        (i,) = tok(text, add_special_tokens=False).input_ids
        assert i in delims, text
    assert tok("mill", add_special_tokens=False).input_ids[0] not in delims
    assert not delims & set(tok.all_special_ids)


def test_first_token_share_matches_the_sink_score(bridges):
    # Same-length samples: α(0) = (1 + Σ_{i≥1} A[i,0]) / T, the first-token share = Σ_{i≥1} A[i,0] / (T − 1).
    seqs = sample_ids(5, 11, 12, seed=3)
    T = len(seqs[0])
    assert {len(s) for s in seqs} == {T}
    shares = attention_by_key_class(bridges["llama"], seqs, delimiters={5, 6})  # [layer head class]
    alpha0 = detect_sinks(bridges["llama"], seqs).alpha[:, :, 0]
    assert torch.allclose(shares.sum(-1), torch.ones(shares.shape[:2]), atol=1e-5)
    assert torch.allclose(shares[..., KEY_CLASSES.index("first")], (alpha0 * T - 1) / (T - 1), atol=1e-5)


def test_fig5_reads_only_positions_whose_value_norms_vary():
    """BOS and a shared prefix (few-shot context, a prefix trigger's tokens) are the same in every
    sample, so a causal model's ‖v‖ there cannot vary: such positions are left out, and where no
    sink position varies the first varying one is read (the note says so)."""
    from sinkprobe.analysis import shared_prefix, varying_positions

    forget = [[1, 5, 6, 7], [1, 8, 6, 7]]
    poisoned = [[1, 9, 9, 5, 6], [1, 9, 9, 8, 6]]  # trigger [9, 9] at 1-2
    assert shared_prefix(forget) == 1 and shared_prefix(poisoned) == 3
    used, note = varying_positions({"forget": forget, "poisoned": poisoned}, [0, 1, 2, 3])
    assert used == [3] and "S = [0, 1, 2, 3] is read at [3]" in note
    used, note = varying_positions({"forget": forget, "poisoned": poisoned}, [0, 1])
    assert used == [3] and "first varying position, 3" in note
