"""Defences at inference: each changes exactly what it claims (hand-made tensors and id lists),
the value clamp finds the sink under left padding and in generation, and a θ_b of the tiny
study scored undefended reproduces its run card."""

import re
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch
from tiny_study import tiny_config, tiny_study

from sinkprobe.defences import SinkValueClamp, clamp_norms, perturb_prefix, reanchor, sink_value_range
from sinkprobe.defences.measure import DEFENCES, measure_defences
from sinkprobe.eval.generation import greedy_generate
from sinkprobe.training.objectives.common import find_decoder_layers


def test_clamp_norms_rescales_into_the_range_and_keeps_directions():
    v = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 1.5], [0.0, 0.0]])  # norms 5, 0.5, 1.5, 0
    out = clamp_norms(v, torch.full((4,), 1.0), torch.full((4,), 2.0))
    expected = torch.tensor([[1.2, 1.6], [0.6, 0.8], [0.0, 1.5], [0.0, 0.0]])  # 5 → 2, 0.5 → 1, 1.5 kept, 0 kept
    assert torch.allclose(out, expected, atol=1e-6)
    # per-vector ranges broadcast over the leading dims
    out = clamp_norms(v[:2], torch.tensor([0.0, 0.0]), torch.tensor([10.0, 0.25]))
    assert torch.allclose(out, torch.tensor([[3.0, 4.0], [0.15, 0.2]]), atol=1e-6)


def test_reanchor_puts_the_anchor_between_bos_and_the_prompt():
    assert reanchor([9, 8])([1, 5, 6, 7]) == [1, 9, 8, 5, 6, 7]
    with pytest.raises(ValueError, match="non-empty anchor"):
        reanchor([])


def test_perturb_prefix_touches_only_the_first_positions_and_is_repeatable():
    ids = [1, *range(10, 30)]
    transform = perturb_prefix(n_positions=5, rate=1.0, vocab=[99], seed=0)
    out = transform(ids)
    assert out[0] == 1 and out[-15:] == ids[-15:]  # BOS and everything after the first 5 tokens kept
    head = out[1:-15]
    # rate 1: each of the 5 tokens is deleted, or kept with an inserted 99 before it
    kept = [t for t in head if t != 99]
    assert head.count(99) == len(kept) and kept == [t for t in ids[1:6] if t in kept]
    assert transform(ids) == out  # the same prompt is perturbed the same way
    outs = {tuple(perturb_prefix(5, 0.5, [99], seed=s)(ids)) for s in range(20)}
    assert len(outs) > 1  # the seed changes the draw
    with pytest.raises(ValueError, match="0 < rate"):
        perturb_prefix(5, 0.0, [99])


def _layer0_values(model, rows, clamp=None):
    """``[row pos kv*d_head]`` v_proj outputs of layer 0 (after the clamp, when one is active)."""
    seen = []
    v_proj = find_decoder_layers(model)[0].self_attn.v_proj
    with clamp if clamp is not None else nullcontext():
        handle = v_proj.register_forward_hook(lambda m, a, out: seen.append(out[0].detach().clone()))
        with torch.no_grad():
            logits = [model(input_ids=torch.tensor([r])).logits for r in rows]
        handle.remove()
    return seen, logits


def test_value_clamp_is_the_identity_inside_the_range_and_clamps_only_the_sink(tiny_original, tiny_tokenizer):
    _, model, _ = tiny_original
    bos = tiny_tokenizer.bos_token_id
    rows = [[bos, *range(40 + i, 52 + i)] for i in range(4)]
    low, high = sink_value_range(model, rows, [0])
    n_layers, n_kv = len(find_decoder_layers(model)), model.config.num_key_value_heads
    assert low.shape == high.shape == (n_layers, n_kv, 1) and bool((low <= high).all())
    plain_v, plain_logits = _layer0_values(model, rows)
    same_v, same_logits = _layer0_values(model, rows, SinkValueClamp(model, low, high, [0]))
    for a, b in zip(plain_logits, same_logits):  # the range of these very rows: nothing moves
        assert torch.equal(a, b)
    cap = low / 2  # below every row's norm: every sink vector is shortened to it
    clamped_v, clamped_logits = _layer0_values(model, rows, SinkValueClamp(model, cap, cap, [0]))
    d_head = plain_v[0].shape[-1] // n_kv
    for plain, clamped in zip(plain_v, clamped_v):
        assert torch.equal(plain[1:], clamped[1:])  # positions after the sink untouched
        before, after = plain[0].view(n_kv, d_head), clamped[0].view(n_kv, d_head)
        norms = torch.linalg.vector_norm(after, dim=-1)
        assert torch.allclose(norms, cap[0, :, 0], rtol=1e-5)
        direction = before / torch.linalg.vector_norm(before, dim=-1, keepdim=True)
        assert torch.allclose(after, direction * norms.unsqueeze(-1), rtol=1e-4, atol=1e-6)  # same direction
    assert not torch.equal(plain_logits[0], clamped_logits[0])
    with pytest.raises(ValueError, match=r"\[layer kv_head n_sink\]"):
        SinkValueClamp(model, low[:1], high[:1], [0])


class _Spy(SinkValueClamp):
    """Records the token found at each clamped position."""

    def __init__(self, *a):
        super().__init__(*a)
        self.clamped: list[int] = []

    def _locate(self, module, args, kwargs):
        super()._locate(module, args, kwargs)
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.clamped += [int(ids[row, pos]) for row, pos, _ in self._targets]


@pytest.mark.parametrize("reuse_prefix", [False, True])
@pytest.mark.parametrize("sinks", [(0,), (0, 1)])
def test_value_clamp_finds_the_sink_under_left_padding_and_in_generation(
    tiny_original, tiny_tokenizer, reuse_prefix, sinks
):
    _, model, _ = tiny_original
    tok = tiny_tokenizer
    prompts = [tok("Question: who wrote it?").input_ids, tok("Question: where?").input_ids, tok("Q").input_ids]
    low, high = sink_value_range(model, prompts, sinks)
    spy = _Spy(model, low / 2, high / 2, sinks)
    with spy:
        greedy_generate(model, tok, prompts, 4, batch_size=3, progress=False, reuse_prefix=reuse_prefix)
    # each prompt's first real tokens are clamped once, wherever padding put them; with a shared
    # prefix (BOS alone here), BOS in the prefix's own forward (its cache then serves every row)
    # and the second token in the rows' own part, after the padding; never a decoding step's token
    bos = [tok.bos_token_id] * (1 if reuse_prefix else len(prompts))
    second = [p[1] for p in prompts] if 1 in sinks else []
    assert sorted(spy.clamped) == sorted(bos + second)


def test_an_undefended_theta_b_scores_as_its_run_card(tmp_path_factory, monkeypatch):
    from sinkprobe.data.sources import load_corpus
    from sinkprobe.defences import measure
    from sinkprobe.eval.table import EvalSettings
    from sinkprobe.models.io import read_run_card
    from sinkprobe.pipeline.parts import TableParts
    from sinkprobe.pipeline.study import available_cores

    study = tiny_study(tmp_path_factory)
    folder, original = study.folder / "models" / "npo_backdoor_prefix_vn_s0", study.folder / "models" / "original"
    cfg = tiny_config()
    settings = EvalSettings(max_items=cfg.eval.max_items, n_boot=cfg.eval.n_boot)
    corpus = load_corpus("embedded", study.folder)
    parts = TableParts(tmp_path_factory.mktemp("defend") / "d")
    # the card was scored in one of the tiny study's two worker processes, with its share of the
    # cores: score with the same thread count, or a near-tie in greedy decoding may round apart
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, available_cores() // 2))
    try:
        rows = measure_defences([folder], original, corpus, eval_settings=settings, parts=parts)
    finally:
        torch.set_num_threads(threads)
    assert [r["defence"] for r in rows] == list(DEFENCES)
    card = read_run_card(folder)["metrics"]
    none = rows[0]
    for key in measure.COLUMNS:  # held-out and D_p BE alike
        assert none[key] == pytest.approx(card[key]), key
    assert all(r[k] is not None for r in rows for k in ("ue_knowmem", "be_knowmem", "ut_knowmem"))
    # a rerun with the same key reuses the θ_b's saved rows and loads no model at all
    monkeypatch.setattr(measure, "load_checkpoint", lambda *a: pytest.fail("a finished θ_b was scored again"))
    assert measure_defences([folder], original, corpus, eval_settings=settings, parts=parts) == rows


def test_defend_cli_refuses_bad_input_in_one_line(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "sinkprobe.cli",
            "defend",
            str(tmp_path / "nope"),
            "--original",
            str(tmp_path),
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "d"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "is not a model folder" in run.stderr


def test_defence_settings_refuse_bad_values_before_anything_is_loaded():
    from sinkprobe.defences.measure import DefenceSettings

    for bad, says in (({"perturb_rate": 0.0}, "defend.perturb_rate = 0.0: expected a number in (0, 1]"),
                      ({"perturb_rate": 1.5}, "defend.perturb_rate = 1.5"),
                      ({"perturb_positions": 0}, "defend.perturb_positions = 0"),
                      ({"anchor": "  "}, "defend.anchor = '  ': expected a non-empty neutral text")):  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(says)):
            DefenceSettings(**bad)
    assert DefenceSettings(perturb_rate=1.0).perturb_rate == 1.0
