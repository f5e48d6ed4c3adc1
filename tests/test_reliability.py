"""Issue 15: nothing a user owns is deleted, no code from a folder runs, resume is atomic,
every bad input is one line. Each test names the item of the issue it holds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from transformers import LlamaForCausalLM

from sinkprobe.cli import main
from sinkprobe.data.synthetic import WorldConfig
from sinkprobe.models.io import load_checkpoint, read_run_card, require_model_folder, save_checkpoint
from sinkprobe.pipeline.study import StudyConfig
from sinkprobe.training import state
from sinkprobe.training.pretrain import ModelConfig, PretrainConfig, pretrain_original
from sinkprobe.training.unlearn import UnlearnConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "training" / "embedded" / "npo.toml")
SMALL_MODEL = ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_mlp=64, max_positions=256)


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()  # what fixtures printed (transformers' progress bars) is not the command's
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def small_ckpt(tmp_path, tiny_tokenizer) -> Path:
    """A random one-layer checkpoint: loads and trains in a blink."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(SMALL_MODEL.llama_config(tiny_tokenizer))
    return save_checkpoint(model, tiny_tokenizer, tmp_path / "ckpt", {"kind": "original"})


@pytest.fixture
def study_dir(tmp_path, tiny_world, small_ckpt) -> Path:
    """An embedded study as `unlearn --study` reads it, with a file of the user's own."""
    study = tmp_path / "study"
    (study / "world").mkdir(parents=True)
    (study / "world" / "corpus.json").write_text(tiny_world.to_json())
    shutil.copytree(small_ckpt, study / "models" / "original")
    (study / "my_notes.txt").write_text("the user's own notes")
    return study


def _unlearn(study: Path, out, *extra) -> list[str]:
    return [
        "unlearn",
        RECIPE,
        "--study",
        str(study),
        "--out",
        str(out),
        "--set",
        "unlearn.steps=2",
        "--set",
        "unlearn.batch_size=2",
        *extra,
    ]


# ---- 1. nothing a user owns is ever deleted ---------------------------------------------------


def test_unlearn_out_never_replaces_the_study_an_input_or_a_users_file(capsys, tmp_path, study_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `--out ''` is the current folder to Path
    mine = tmp_path / "notes.md"
    mine.write_text("my notes")
    folder = tmp_path / "my_folder"
    folder.mkdir()
    (folder / "a.txt").write_text("keep me")
    before = _files(study_dir)
    cases = {
        study_dir: "is or holds this run's input",
        study_dir / "models" / "original": "is or holds this run's input",
        study_dir / "world": "is or holds this run's input",
        mine: "exists and is not a folder",
        folder: "is not a sinkprobe checkpoint",
        "": "--out is empty",
    }
    for out, message in cases.items():
        assert message in _one_line_error(capsys, _unlearn(study_dir, out))
    assert _files(study_dir) == before
    assert mine.read_text() == "my notes" and _files(folder) == {"a.txt": b"keep me"}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing hidden left beside


def test_unlearn_replaces_a_finished_checkpoint_only_when_asked_and_never_one_of_the_study(capsys, tmp_path, study_dir):
    out = tmp_path / "theta_u"
    assert main(_unlearn(study_dir, out)) == 0
    card = read_run_card(out)
    # 8: the resumable state is removed on success, and the checkpoint is readable like other files
    assert not out.with_name(f".{out.name}.state").exists()
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {p.name: 0o666 & ~umask for p in out.iterdir()}
    capsys.readouterr()
    assert "pass --overwrite" in _one_line_error(capsys, _unlearn(study_dir, out))
    assert read_run_card(out) == card
    assert main(_unlearn(study_dir, out, "--overwrite")) == 0
    # a checkpoint of the study is its input: never replaced from outside, even with --overwrite
    shutil.copytree(out, study_dir / "models" / "npo")
    before = _files(study_dir)
    capsys.readouterr()
    assert "is part of the study" in _one_line_error(
        capsys, _unlearn(study_dir, study_dir / "models" / "npo", "--overwrite")
    )
    assert _files(study_dir) == before


def test_save_checkpoint_never_replaces_a_folder_it_did_not_write_nor_leaves_half_of_one(
    tmp_path, small_ckpt, monkeypatch
):
    model, tok = load_checkpoint(small_ckpt)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="not a sinkprobe checkpoint"):
        save_checkpoint(model, tok, theirs, {"kind": "x"})
    assert (theirs / "thesis.tex").read_text() == "years of work"

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(tok), "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(model, tok, tmp_path / "new", {"kind": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "theirs"]  # no hidden half-written folder


def test_study_commands_refuse_a_file_or_a_foreign_folder_as_out(capsys, tmp_path):
    mine = tmp_path / "notes.md"
    mine.write_text("my notes")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_text("meow")
    for command in ("world", "pretrain", "study"):
        assert "is a file, not a folder" in _one_line_error(capsys, [command, "--quick", "--out", str(mine)])
        assert "is not a sinkprobe study" in _one_line_error(capsys, [command, "--quick", "--out", str(foreign)])
        assert "--out is empty" in _one_line_error(capsys, [command, "--quick", "--out", ""])
    assert mine.read_text() == "my notes" and _files(foreign) == {"cat.jpg": b"meow"}


# ---- 2. no code from a folder ever runs --------------------------------------------------------


def test_a_folder_with_its_own_code_is_refused_even_when_stdin_answers_yes(tmp_path, small_ckpt, tiny_world):
    import json

    evil = tmp_path / "evil"
    shutil.copytree(small_ckpt, evil)
    marker = tmp_path / "MARKER"
    (evil / "evil_tok.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\nclass EvilTok(PreTrainedTokenizerFast):\n    pass\n"
    )
    cfg = json.loads((evil / "tokenizer_config.json").read_text())
    cfg.update(auto_map={"AutoTokenizer": ["evil_tok.EvilTok", None]}, tokenizer_class="EvilTok")
    (evil / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "corpus.json").write_text(tiny_world.to_json())
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "sinkprobe.cli",
            "evaluate",
            str(evil),
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "t"),
        ],
        input="y\n",
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "auto_map" in run.stderr and "never runs code" in run.stderr and "[y/N]" not in run.stdout + run.stderr
    assert not marker.exists()
    # the same for a model config that points at code
    cfg = json.loads((small_ckpt / "config.json").read_text())
    (small_ckpt / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}))
    with pytest.raises(ValueError, match="auto_map"):
        require_model_folder(small_ckpt)


# ---- 3. resume is atomic as a set --------------------------------------------------------------


def test_a_kill_between_the_state_writes_resumes_to_the_same_weights(tmp_path, tiny_world, tiny_tokenizer, monkeypatch):
    cfg = PretrainConfig(steps=6, batch_size=2, seq_len=256, lr=3e-3, warmup_steps=1, save_every=2)
    docs = tiny_world.pretraining_documents()
    full, full_summary = pretrain_original(docs, tiny_tokenizer, TINY_MODEL, cfg, tmp_path / "a", progress=False)
    real, optimizer_writes = state.atomic_save_tensors, []

    def killed_at_the_second_save(path, tensors):
        if path.name == "optimizer.safetensors":
            optimizer_writes.append(path)
            if len(optimizer_writes) == 2:  # step 4's weights are written, its optimizer and record are not
                raise OSError("killed between the writes")
        real(path, tensors)

    monkeypatch.setattr(state, "atomic_save_tensors", killed_at_the_second_save)
    with pytest.raises(OSError, match="killed"):
        pretrain_original(docs, tiny_tokenizer, TINY_MODEL, cfg, tmp_path / "b", progress=False)
    monkeypatch.undo()
    resumed, summary = pretrain_original(docs, tiny_tokenizer, TINY_MODEL, cfg, tmp_path / "b", progress=False)
    assert summary["losses"] == full_summary["losses"]
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["step-00000006"]  # superseded states and leftovers removed
    umask = os.umask(0)
    os.umask(umask)
    assert ((tmp_path / "b" / "step-00000006").stat().st_mode & 0o777) == 0o777 & ~umask  # 8: not private


def test_a_damaged_training_state_names_the_folder_to_delete(tmp_path, tiny_world, tiny_tokenizer):
    cfg = PretrainConfig(steps=4, batch_size=2, seq_len=256, warmup_steps=1, save_every=2)
    docs = tiny_world.pretraining_documents()
    pretrain_original(docs, tiny_tokenizer, TINY_MODEL, cfg, tmp_path / "s", progress=False, stop_after=2)
    weights = tmp_path / "s" / "step-00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=re.escape(f"delete {tmp_path / 's'} to restart")):
        pretrain_original(docs, tiny_tokenizer, TINY_MODEL, cfg, tmp_path / "s", progress=False)


# ---- 4. configs are checked when built ---------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: UnlearnConfig(lr="fast"), "unlearn.lr = 'fast': expected a number > 0"),
        (lambda: UnlearnConfig(steps="two"), "unlearn.steps = 'two': expected an integer ≥ 1"),
        (lambda: UnlearnConfig(steps=0), "unlearn.steps = 0: expected an integer ≥ 1"),
        (lambda: UnlearnConfig(lr=0), "unlearn.lr = 0: expected a number > 0"),
        (lambda: UnlearnConfig(poison_ratio=1.5), "unlearn.poison_ratio = 1.5: expected a number in [0, 1]"),
        (
            lambda: UnlearnConfig(sink_positions=[0, -1]),
            "unlearn.sink_positions = (0, -1): expected a list of integers, each ≥ 0",
        ),
        (lambda: UnlearnConfig(bf16="yes"), "unlearn.bf16 = 'yes': expected true or false"),
        (lambda: UnlearnConfig(trigger_text="t", trigger_placement="middle"), "unlearn.trigger_placement"),
        (lambda: PretrainConfig(steps=-1), "pretrain.steps = -1: expected an integer ≥ 1"),
        (lambda: PretrainConfig(lr="abc"), "pretrain.lr = 'abc': expected a number > 0"),
        (lambda: WorldConfig(n_general_passages=-5), "world.n_general_passages = -5: expected an integer ≥ 0"),
        (lambda: ModelConfig(n_heads=3), "model.d_model = 256 is not a multiple of model.n_heads = 3"),
        (lambda: StudyConfig(seeds=()), "study.seeds = (): expected a list of at least one"),
        (
            lambda: StudyConfig(model=ModelConfig(max_positions=128)),
            "model.max_positions = 128: expected ≥ pretrain.seq_len = 256",
        ),
    ],
)
def test_a_bad_config_value_is_refused_when_the_config_is_built(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_good_values_in_every_accepted_spelling_are_kept():
    cfg = UnlearnConfig.from_dict({"sink_positions": [0, 1], "trigger_text": "t", "trigger_placement": "3", "lr": 1})
    assert cfg.sink_positions == (0, 1) and cfg.trigger.placement == 3 and cfg.lr == 1
    assert UnlearnConfig(trigger_text="t", trigger_placement=2).trigger.placement == 2
    built_in_python = UnlearnConfig(sink_positions=[0, 1])  # as from_dict would build it: one config, one hash
    assert built_in_python == UnlearnConfig(sink_positions=(0, 1)) and hash(built_in_python)


def test_a_bad_set_value_fails_in_one_line_before_any_work(capsys, tmp_path):
    out = tmp_path / "s"
    recipes = str(ROOT / "training" / "embedded")
    for item, message in (
        ("pretrain.lr=abc", "pretrain.lr = 'abc': expected a number > 0"),
        ("pretrain.steps=-1", "pretrain.steps = -1: expected an integer ≥ 1"),
        ("unlearn.lr=fast", "unlearn.lr = 'fast': expected a number > 0"),
        ("unlearn.steps=0", "unlearn.steps = 0: expected an integer ≥ 1"),
    ):
        assert message in _one_line_error(
            capsys, ["study", "--quick", "--out", str(out), "--recipes", recipes, "--set", item]
        )
    assert "unlearn.lr = 0: expected a number > 0" in _one_line_error(
        capsys, ["unlearn", RECIPE, "--set", "unlearn.lr=0", "--out", str(tmp_path / "m")]
    )
    assert not out.exists() and not (tmp_path / "m").exists()


# ---- 5. a sentence, not a traceback ------------------------------------------------------------


def test_loader_errors_name_the_file_and_the_fix(tmp_path, small_ckpt):
    trunc = tmp_path / "trunc"
    shutil.copytree(small_ckpt, trunc)
    (trunc / "model.safetensors").write_bytes((trunc / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(ValueError, match="weights in .*trunc are damaged.*re-create"):
        load_checkpoint(trunc)
    pickled = tmp_path / "pickled"
    shutil.copytree(small_ckpt, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model.bin \(pickle\).*safetensors only.*save_pretrained"):
        require_model_folder(pickled)
    with pytest.raises(
        FileNotFoundError, match="no folder meta-llama/Llama-2-7b-hf: if it is a Hugging Face Hub id.*download"
    ):
        require_model_folder("meta-llama/Llama-2-7b-hf")
    (small_ckpt / "run_card.json").write_text('{"kind": ')
    with pytest.raises(ValueError, match="run_card.json is not valid JSON.*re-create"):
        read_run_card(small_ckpt)


def test_malformed_world_files_are_named_with_the_fix(capsys, tmp_path, study_dir):
    (study_dir / "world" / "corpus.json").write_text('{"forget": {}}')
    err = _one_line_error(capsys, _unlearn(study_dir, tmp_path / "m"))
    assert "corpus.json is not a valid sinkprobe corpus" in err and "sinkprobe world --out" in err
    (study_dir / "world" / "corpus.json").write_text("")
    assert "corpus.json is not a valid sinkprobe corpus" in _one_line_error(capsys, _unlearn(study_dir, tmp_path / "m"))
    s = tmp_path / "s"
    (s / "world").mkdir(parents=True)
    (s / "world" / "stage.json").write_text("{")
    err = _one_line_error(capsys, ["world", "--quick", "--out", str(s)])
    assert "stage.json is not valid JSON" in err and "delete" in err


def test_an_embedded_corpus_without_test_sets_does_not_talk_about_wmdp(tiny_world):
    from dataclasses import replace

    from sinkprobe.data.poison import Trigger
    from sinkprobe.pipeline.recipes import DataSpec
    from sinkprobe.pipeline.runs import evaluate_model

    corpus = replace(tiny_world, forget=replace(tiny_world.forget, knowmem=()))
    with pytest.raises(ValueError) as e:
        evaluate_model(None, None, corpus, Trigger(), DataSpec(source="embedded", path="runs/x"), None)
    assert "WMDP" not in str(e.value) and "sinkprobe world" in str(e.value)


def test_evaluate_checks_its_output_before_evaluating(capsys, tmp_path, monkeypatch, small_ckpt, tiny_world):
    import sinkprobe.guards
    import sinkprobe.pipeline.runs

    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "corpus.json").write_text(tiny_world.to_json())
    monkeypatch.setattr(
        sinkprobe.pipeline.runs, "load_checkpoint", lambda *a, **k: pytest.fail("evaluated before checking the output")
    )
    (tmp_path / "t.md").write_text("an earlier table")
    argv = ["evaluate", str(small_ckpt), "--data", str(tmp_path)]
    assert "t.md already exists" in _one_line_error(capsys, [*argv, "--out", str(tmp_path / "t")])
    read_only = tmp_path / "ro"
    real_access = os.access
    monkeypatch.setattr(sinkprobe.guards.os, "access", lambda p, mode: Path(p) != read_only and real_access(p, mode))
    read_only.mkdir()
    assert "cannot write to the output folder" in _one_line_error(capsys, [*argv, "--out", str(read_only / "t")])
    assert "--out is empty" in _one_line_error(capsys, [*argv, "--out", ""])
    err = _one_line_error(
        capsys,
        [
            "evaluate",
            str(small_ckpt),
            "--source",
            "muse",
            "--data",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "t2"),
        ],
    )
    assert "no MUSE corpus folder" in err and "verbmem/forget" in err  # the list of expected files, on the same line


def test_a_bug_keeps_its_traceback_and_a_full_disk_is_one_line(capsys, monkeypatch, tmp_path):
    import errno

    import sinkprobe.cli

    def raises(error):
        def command(args):
            raise error

        return command

    monkeypatch.setattr(sinkprobe.cli, "cmd_world", raises(KeyError("a bug, not a user error")))
    with pytest.raises(KeyError):
        main(["world", "--out", str(tmp_path)])
    monkeypatch.setattr(sinkprobe.cli, "cmd_world", raises(OSError(errno.EBADF, "Bad file descriptor")))
    with pytest.raises(OSError):
        main(["world", "--out", str(tmp_path)])
    monkeypatch.setattr(
        sinkprobe.cli, "cmd_world", raises(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x")))
    )
    err = _one_line_error(capsys, ["world", "--out", str(tmp_path)])
    assert f"No space left on device ({tmp_path / 'x'}): free space" in err and "run the same command to resume" in err


# ---- 6. Ctrl-C ---------------------------------------------------------------------------------


def test_ctrl_c_says_where_the_run_resumes_and_exits_130(capsys, tmp_path, monkeypatch, tiny_world, tiny_tokenizer):
    import sinkprobe.cli
    import sinkprobe.training.pretrain as pretrain

    cfg = PretrainConfig(steps=6, batch_size=2, seq_len=256, warmup_steps=1, save_every=2)
    real_loss, calls = pretrain.lm_loss, []

    def pressed_at_step_3(*a):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_loss(*a)

    monkeypatch.setattr(pretrain, "lm_loss", pressed_at_step_3)
    monkeypatch.setattr(
        sinkprobe.cli,
        "cmd_pretrain",
        lambda args: pretrain_original(
            tiny_world.pretraining_documents(), tiny_tokenizer, TINY_MODEL, cfg, tmp_path / "state", progress=False
        ),
    )
    try:
        rc = main(["pretrain", "--out", str(tmp_path)])
    except KeyboardInterrupt:  # caught here, or pytest would take it for the user's own Ctrl-C and stop the session
        pytest.fail("Ctrl-C reached the user as a KeyboardInterrupt traceback")
    assert rc == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        "sinkprobe pretrain: interrupted; run the same command to resume (finished stages are kept; "
        f"the last training state saved is step 2 in {tmp_path / 'state'})"
    )
