import subprocess
import sys
from pathlib import Path

import pytest

from sinkprobe.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["world", "pretrain", "unlearn", "evaluate", "figures", "claims", "study"]


def test_every_subcommand_documents_every_option():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(SUBCOMMANDS) <= set(sub.choices)
    for name, sp in sub.choices.items():
        for action in sp._actions:
            if action.dest != "help":
                assert action.help, f"`sinkprobe {name}` option {action.dest} has no help text"


def test_help_runs_as_an_installed_command():
    out = subprocess.run([sys.executable, "-m", "sinkprobe.cli", "--help"], capture_output=True, text=True, check=True)
    assert "study" in out.stdout and "unlearn" in out.stdout


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_wrong_paths_and_fields_are_one_line_errors(capsys, tmp_path):
    err = _one_line_error(capsys, ["unlearn", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "m")])
    assert "no recipe at" in err
    recipe = str(ROOT / "training" / "embedded" / "npo.toml")
    err = _one_line_error(capsys, ["unlearn", recipe, "--set", "unlearn.bogus=1", "--out", str(tmp_path / "m")])
    assert "unknown recipe field(s) bogus" in err
    err = _one_line_error(capsys, ["unlearn", recipe, "--study", str(tmp_path), "--out", str(tmp_path / "m")])
    assert "sinkprobe world" in err  # names the fix: build the world first
    err = _one_line_error(
        capsys, ["evaluate", str(tmp_path / "missing_ckpt"), "--data", str(tmp_path), "--out", str(tmp_path / "t")]
    )
    assert "no embedded world" in err or "not a model folder" in err
    err = _one_line_error(capsys, ["study", "--out", str(tmp_path / "s"), "--recipes", str(tmp_path / "none")])
    assert "no recipes folder" in err


def test_quick_keeps_its_own_overrides_and_adds_the_users():
    from sinkprobe.cli import _study_config
    from sinkprobe.pipeline.study import quick_config

    args = build_parser().parse_args(["study", "--quick", "--set", "unlearn.lr=1e-4"])
    assert _study_config(args).overrides == (*quick_config().overrides, "unlearn.lr=1e-4")


def test_study_set_changes_the_world_and_theta_o_and_passes_the_rest_to_the_recipes(capsys, tmp_path):
    from sinkprobe.cli import _study_config
    from sinkprobe.pipeline.study import StudyConfig, stage_key

    items = ["pretrain.weight_decay=0.5", "model.n_layers=6", "world.seed=3", "unlearn.lr=1e-4"]
    cfg = _study_config(build_parser().parse_args(["study", *(a for item in items for a in ("--set", item))]))
    default = StudyConfig()
    assert (cfg.pretrain.weight_decay, cfg.model.n_layers, cfg.world.seed) == (0.5, 6, 3)
    assert (cfg.pretrain.lr, cfg.model.d_model, cfg.world.n_general_passages) == (
        default.pretrain.lr,
        default.model.d_model,
        default.world.n_general_passages,
    )
    assert cfg.overrides == ("unlearn.lr=1e-4",)
    # θ_o's stage key follows its config: a study run with pretrain.* retrains θ_o instead of reusing it
    assert stage_key("original", "w", cfg.model, cfg.pretrain) != stage_key(
        "original", "w", default.model, default.pretrain
    )
    err = _one_line_error(capsys, ["study", "--out", str(tmp_path / "s"), "--set", "pretrain.wd=0.5"])
    assert "pretrain.wd: unknown field" in err and "weight_decay" in err
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_negative_jobs_is_a_one_line_error(capsys, tmp_path):
    err = _one_line_error(capsys, ["study", "--out", str(tmp_path), "--jobs", "-1"])
    assert "--jobs must be ≥ 0" in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_missing_checkpoint_is_a_one_line_error(capsys, tmp_path, tiny_world):
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "corpus.json").write_text(tiny_world.to_json())
    err = _one_line_error(
        capsys, ["evaluate", str(tmp_path / "missing_ckpt"), "--data", str(tmp_path), "--out", str(tmp_path / "t")]
    )
    assert "not a model folder" in err


def test_device_choice_and_bad_device_is_a_one_line_error_before_anything_is_written(capsys, tmp_path, monkeypatch):
    import torch

    from sinkprobe.models.io import DEVICE_ENV, default_device

    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert default_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert default_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "gpu0")
    err = _one_line_error(capsys, ["study", "--quick", "--out", str(tmp_path / "s")])
    assert "SINKPROBE_DEVICE='gpu0' is not a device" in err and "cuda:N" in err
    if not torch.cuda.is_available():
        monkeypatch.setenv(DEVICE_ENV, "cuda")
        err = _one_line_error(capsys, ["pretrain", "--quick", "--out", str(tmp_path / "s")])
        assert "sees no CUDA device" in err and "unset it" in err
    monkeypatch.setenv(DEVICE_ENV, "mps")
    err = _one_line_error(
        capsys, ["unlearn", str(ROOT / "training" / "embedded" / "npo.toml"), "--out", str(tmp_path / "m")]
    )
    assert "runs on cpu or cuda" in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


def test_set_picks_the_base_and_the_analysis_layer_without_a_section():
    from sinkprobe.pipeline.study import StudyConfig, with_overrides

    cfg = with_overrides(
        StudyConfig(), ["base=smollm2-135m", "analysis_layer=20", "finetune.epochs=3", "unlearn.lr=1e-5"]
    )
    assert (cfg.base, cfg.analysis_layer, cfg.finetune.epochs) == ("smollm2-135m", 20, 3)
    assert cfg.overrides == ("unlearn.lr=1e-5",)
    seeds = with_overrides(StudyConfig(), ["seeds=[0,1,2]", "extra_runs=true"])
    assert (seeds.seeds, seeds.extra_runs, seeds.overrides) == ((0, 1, 2), True, ())
    assert with_overrides(StudyConfig(), ["seeds=3"]).seeds == (3,)
    with pytest.raises(ValueError, match="seeds"):
        with_overrides(StudyConfig(), ["seeds=[-1]"])


def test_study_configs_are_toml_files_that_inherit_and_name_a_bad_field(tmp_path):
    from sinkprobe.cli import _study_config
    from sinkprobe.pipeline.study import StudyConfig, load_study_config

    (tmp_path / "base.toml").write_text('seeds = [1]\nbase = "scratch"\n[world]\nseed = 3\nn_forget_entities = 7\n')
    (tmp_path / "child.toml").write_text('inherits = "base.toml"\nextra_runs = true\n[world]\nn_forget_entities = 5\n')
    cfg = load_study_config(tmp_path / "child.toml")
    assert (cfg.seeds, cfg.base, cfg.extra_runs) == ((1,), "scratch", True)
    assert (cfg.world.seed, cfg.world.n_forget_entities) == (3, 5)  # sections merge field by field, the child's win
    assert cfg.model == StudyConfig().model
    (tmp_path / "typo.toml").write_text('inherits = "base.toml"\nsedes = [2]\n')
    with pytest.raises(ValueError, match="unknown study field.*sedes"):
        load_study_config(tmp_path / "typo.toml")
    (tmp_path / "section.toml").write_text("[world]\nn_people = 3\n")
    with pytest.raises(ValueError, match=r"\[world\] has unknown field.*n_people"):
        load_study_config(tmp_path / "section.toml")
    (tmp_path / "loop.toml").write_text('inherits = "loop.toml"\n')
    with pytest.raises(ValueError, match="inherits from itself"):
        load_study_config(tmp_path / "loop.toml")
    with pytest.raises(FileNotFoundError, match="no study config at"):
        load_study_config(tmp_path / "missing.toml")
    args = build_parser().parse_args(["study", "--config", str(tmp_path / "child.toml"), "--set", "seeds=[4]"])
    assert _study_config(args).seeds == (4,)  # --set applies on top of the file
    with pytest.raises(ValueError, match="--quick and --config exclude each other"):
        _study_config(build_parser().parse_args(["study", "--quick", "--config", str(tmp_path / "child.toml")]))


def test_the_default_study_is_smollm2_with_its_recipes_and_full_and_quick_change_the_grid(capsys, tmp_path):
    from sinkprobe.cli import _study_config
    from sinkprobe.models.base import DEFAULT_BASE, SCRATCH
    from sinkprobe.pipeline.study import StudyConfig, default_jobs, default_recipes

    parse = lambda *a: _study_config(build_parser().parse_args(["study", *a]))  # noqa: E731
    default, full, quick = parse(), parse("--full"), parse("--quick")
    assert default.base == DEFAULT_BASE == "smollm2-135m" and default.seeds == (0,) and not default.extra_runs
    assert full.base == DEFAULT_BASE and full.seeds == (0, 1, 2) and full.extra_runs
    assert (
        quick.base == SCRATCH and quick.seeds == (0,) and quick.extra_runs
    )  # the smoke test exercises every kind of run
    assert parse("--full", "--set", "base=scratch").base == SCRATCH
    assert default_recipes(DEFAULT_BASE) == Path("training/smollm2") and default_recipes(SCRATCH) == Path(
        "training/embedded"
    )
    assert default_recipes("/models/llama-2-7b") == Path("training/smollm2")  # any pretrained base
    for name in ("npo", "rmu", "npo_backdoor", "rmu_backdoor"):  # both recipe folders hold the study's four recipes
        assert (ROOT / default_recipes(DEFAULT_BASE) / f"{name}.toml").is_file() and (
            ROOT / default_recipes(SCRATCH) / f"{name}.toml"
        ).is_file()
    assert default_jobs(DEFAULT_BASE) == 1  # a 135M model trains faster on both cores than two runs on one each
    assert StudyConfig().base == DEFAULT_BASE
    err = _one_line_error(capsys, ["study", "--quick", "--full", "--out", str(tmp_path / "s")])
    assert "--quick and --full exclude each other" in err
