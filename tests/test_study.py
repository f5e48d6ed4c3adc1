"""The study command's stage cache: a second run reuses every finished stage."""

from dataclasses import replace
from pathlib import Path

from sinkprobe.study import run_study

from tiny_study import RECIPES, tiny_config, tiny_study


def _stamps(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in (folder / "models").glob("*/model.safetensors")}


def test_second_run_retrains_nothing(monkeypatch, tmp_path_factory):
    study = tiny_study(tmp_path_factory)
    before = _stamps(study.folder)
    assert len(before) >= 8  # θ_o, θ_u (NPO, RMU), θ_b variants

    def no_training(*a, **k):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr("sinkprobe.study.pretrain_original", no_training)
    monkeypatch.setattr("sinkprobe.study.train_and_save", no_training)
    report = run_study(tiny_config(), study.folder, RECIPES, None)
    assert report.is_file() and _stamps(study.folder) == before


def test_changed_recipe_field_reruns_only_that_stage(monkeypatch, tmp_path_factory):
    study = tiny_study(tmp_path_factory)
    trained = []

    def record(recipe, corpus, original, out, *a, **k):
        trained.append(out.name)
        raise RuntimeError("stop after recording")

    monkeypatch.setattr("sinkprobe.study.train_and_save", record)
    cfg = tiny_config()
    cfg = replace(cfg, overrides=cfg.overrides + ("unlearn.beta=0.2",))
    try:
        run_study(cfg, study.folder, RECIPES, None)
    except RuntimeError:
        pass
    # θ_o and the world are reused; the first unlearning stage (NPO θ_u) is the first to redo
    assert trained == ["npo"]
