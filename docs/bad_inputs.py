"""Regenerate the table of docs/bad_inputs.md: every bad input below goes through `sinkprobe`
(in process), each on its own fresh copy of throwaway fixtures in a scratch folder; prints one
Markdown row per input: exit status, the message, and which of the fixtures' files it changed
or deleted.

    OMP_NUM_THREADS=1 python docs/bad_inputs.py /tmp/scratch > table.md
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import sinkprobe  # noqa: E402

assert Path(sinkprobe.__file__).is_relative_to(ROOT), f"run from a checkout: sinkprobe came from {sinkprobe.__file__}"
from sinkprobe.cli import main  # noqa: E402
from sinkprobe.data.synthetic import WorldConfig, build_world  # noqa: E402
from sinkprobe.data.tokenizer import train_tokenizer  # noqa: E402
from sinkprobe.models.io import save_checkpoint  # noqa: E402
from sinkprobe.training.pretrain import ModelConfig  # noqa: E402


def build(base: Path) -> None:
    """The fixtures every case gets a fresh copy of: recipes, a tiny world, a one-layer
    checkpoint and damaged variants of it, a study holding a file of the user's own."""
    base.mkdir(parents=True)
    shutil.copytree(ROOT / "training" / "embedded", base / "recipes")
    world = build_world(WorldConfig(seed=1, n_forget_entities=4, n_retain_entities=4, n_general_passages=20))
    tok = train_tokenizer(world.pretraining_documents(), vocab_size=512)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_mlp=64, max_positions=256).llama_config(tok)
    )
    ckpt = save_checkpoint(model, tok, base / "ckpt", {"kind": "original"})
    for name, edit in {
        "finished": lambda d: None,
        "pickled": lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"),
        "code_tok": lambda d: _set_json(d / "tokenizer_config.json", auto_map={"AutoTokenizer": ["x.Y", None]}),
        "code_cfg": lambda d: _set_json(d / "config.json", auto_map={"AutoModelForCausalLM": "x.Y"}),
        "trunc": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]),
        "badcard": lambda d: (d / "run_card.json").write_text('{"kind": '),
    }.items():
        shutil.copytree(ckpt, base / name)
        edit(base / name)
    corpus = world.to_json()
    no_knowmem = json.loads(corpus)
    no_knowmem["forget"]["knowmem"] = []
    for name, text in (
        ("study", corpus),
        ("empty_corpus", ""),
        ("keys_corpus", '{"forget": {}}'),
        ("noqa", json.dumps(no_knowmem)),
    ):
        (base / name / "world").mkdir(parents=True)
        (base / name / "world" / "corpus.json").write_text(text)
        shutil.copytree(ckpt, base / name / "models" / "original")
    (base / "study" / "my_notes.txt").write_text("notes")
    (base / "badstage" / "world").mkdir(parents=True)
    (base / "badstage" / "world" / "stage.json").write_text("{")
    (base / "badcard_study" / "world").mkdir(parents=True)
    shutil.copytree(ckpt, base / "badcard_study" / "models" / "original")
    (base / "badcard_study" / "models" / "original" / "run_card.json").write_text("{")
    (base / ".damaged.state" / "step-00000002").mkdir(parents=True)
    (base / ".damaged.state" / "step-00000002" / "state.json").write_text('{"meta": ')
    (base / "notes.md").write_text("my notes")
    (base / "mine").mkdir()
    (base / "mine" / "a.txt").write_text("keep")
    (base / "table.md").write_text("an earlier table")


def _set_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


U = ["unlearn", "recipes/npo.toml", "--study", "study", "--set", "unlearn.steps=1", "--set", "unlearn.batch_size=2"]
UB = ["unlearn", "recipes/npo_backdoor.toml", "--study", "study", "--set", "unlearn.steps=1"]
E = ["evaluate", "--data", "study", "--max-items", "2"]
Q = ["--quick", "--recipes", "recipes"]
CASES = [
    ("unlearn: recipe path that does not exist", ["unlearn", "nope.toml", "--out", "m"]),
    ("unlearn: recipe that is not TOML", ["unlearn", "notes.md", "--out", "m"]),
    ("unlearn: `--set` without `=`", [*U, "--set", "unlearn.lr", "--out", "m"]),
    ("unlearn: `--set` unknown field", [*U, "--set", "unlearn.bogus=1", "--out", "m"]),
    ("unlearn: `--set unlearn.lr=fast`", [*U, "--set", "unlearn.lr=fast", "--out", "m"]),
    ("unlearn: `--set unlearn.steps=two`", [*U, "--set", "unlearn.steps=two", "--out", "m"]),
    ("unlearn: `--set unlearn.steps=0`", [*U, "--set", "unlearn.steps=0", "--out", "m"]),
    ("unlearn: `--set unlearn.steps=-3`", [*U, "--set", "unlearn.steps=-3", "--out", "m"]),
    ("unlearn: `--set unlearn.lr=0`", [*U, "--set", "unlearn.lr=0", "--out", "m"]),
    ("unlearn: `--set unlearn.method=ga`", [*U, "--set", "unlearn.method=ga", "--out", "m"]),
    ("unlearn: `--set unlearn.batch_size=0`", [*U, "--set", "unlearn.batch_size=0", "--out", "m"]),
    ("unlearn: `--set unlearn.poison_ratio=2`", [*UB, "--set", "unlearn.poison_ratio=2", "--out", "m"]),
    ("unlearn: `--set unlearn.poison_ratio=0` on a backdoor", [*UB, "--set", "unlearn.poison_ratio=0", "--out", "m"]),
    (
        "unlearn: `--set unlearn.trigger_placement=middle`",
        [*UB, "--set", "unlearn.trigger_placement=middle", "--out", "m"],
    ),
    ("unlearn: `--set unlearn.trigger_placement=0` (BOS)", [*UB, "--set", "unlearn.trigger_placement=0", "--out", "m"]),
    ("unlearn: `--set unlearn.trigger_text='  '`", [*UB, "--set", "unlearn.trigger_text='  '", "--out", "m"]),
    ("unlearn: `--set unlearn.sink_positions=[-1]`", [*U, "--set", "unlearn.sink_positions=[-1]", "--out", "m"]),
    ("unlearn: `--set unlearn.bf16=yes`", [*U, "--set", "unlearn.bf16=yes", "--out", "m"]),
    ("unlearn: `--set unlearn.max_length=1`", [*U, "--set", "unlearn.max_length=1", "--out", "m"]),
    ("unlearn: value_norm_weight on a normal recipe", [*U, "--set", "unlearn.value_norm_weight=1", "--out", "m"]),
    ("unlearn: value-norm backdoor, study has no θ_u", [*UB, "--set", "unlearn.value_norm_weight=1", "--out", "m"]),
    ("unlearn: `--set data.source=hub`", [*U, "--set", "data.source=hub", "--out", "m"]),
    ("unlearn: `--study` without a world", ["unlearn", "recipes/npo.toml", "--study", "mine", "--out", "m"]),
    ("unlearn: `--study ''`", ["unlearn", "recipes/npo.toml", "--study", "", "--out", "m"]),
    ("unlearn: `--out` = the study", [*U, "--out", "study"]),
    ("unlearn: `--out` = θ_o of the run", [*U, "--out", "study/models/original"]),
    ("unlearn: `--out` = the study's world", [*U, "--out", "study/world"]),
    ("unlearn: `--out` = the recipe file", [*U, "--out", "recipes/npo.toml"]),
    ("unlearn: `--out` an existing file", [*U, "--out", "notes.md"]),
    ("unlearn: `--out` a folder of the user's", [*U, "--out", "mine"]),
    ("unlearn: `--out ''`", [*U, "--out", ""]),
    ("unlearn: `--out` a finished checkpoint, no `--overwrite`", [*U, "--out", "finished"]),
    (
        "unlearn: `--out` an existing folder of the study, with `--overwrite`",
        [*U, "--out", "study/models", "--overwrite"],
    ),
    ("unlearn: `--out` under a read-only folder", [*U, "--out", "/proc/sys/m"]),
    ("unlearn: `--out` under a file", [*U, "--out", "notes.md/m"]),
    ("unlearn: θ_o given as a Hub id", [*U, "--set", "original=meta-llama/Llama-2-7b-hf", "--out", "m"]),
    ("unlearn: θ_o a pickle-only folder", [*U, "--set", "original=pickled", "--out", "m"]),
    ("unlearn: θ_o whose tokenizer_config.json has auto_map", [*U, "--set", "original=code_tok", "--out", "m"]),
    ("unlearn: θ_o whose config.json has auto_map", [*U, "--set", "original=code_cfg", "--out", "m"]),
    ("unlearn: θ_o with truncated model.safetensors", [*U, "--set", "original=trunc", "--out", "m"]),
    ("unlearn: empty corpus.json", ["unlearn", "recipes/npo.toml", "--study", "empty_corpus", "--out", "m"]),
    ("unlearn: corpus.json missing its books", ["unlearn", "recipes/npo.toml", "--study", "keys_corpus", "--out", "m"]),
    ("unlearn: damaged training state beside `--out`", [*U, "--out", "damaged"]),
    ("unlearn: `SINKPROBE_DEVICE=gpu0`", "DEVICE"),
    ("unlearn: `--set unlearn.epochs=-1`", [*U, "--set", "unlearn.epochs=-1", "--out", "m"]),
    ("unlearn: `--set unlearn.rmu_steering_layer=-2`", [*U, "--set", "unlearn.rmu_steering_layer=-2", "--out", "m"]),
    (
        "unlearn: `--set unlearn.value_norm_layers=[1.5]`",
        [*U, "--set", "unlearn.value_norm_layers=[1.5]", "--out", "m"],
    ),
    ("evaluate: checkpoint that does not exist", [*E, "nope_ckpt", "--out", "t"]),
    ("evaluate: `--data` without a world", ["evaluate", "ckpt", "--data", "mine", "--out", "t"]),
    (
        "evaluate: `--source muse` on a missing folder",
        ["evaluate", "ckpt", "--source", "muse", "--data", "nope", "--out", "t"],
    ),
    (
        "evaluate: `--source wmdp` on a missing folder",
        ["evaluate", "ckpt", "--source", "wmdp", "--data", "nope", "--out", "t"],
    ),
    ("evaluate: embedded world without KnowMem", ["evaluate", "ckpt", "--data", "noqa", "--out", "t"]),
    ("evaluate: `--out` an existing table", [*E, "ckpt", "--out", "table"]),
    ("evaluate: `--out ''`", [*E, "ckpt", "--out", ""]),
    ("evaluate: `--out` under a read-only folder", [*E, "ckpt", "--out", "/proc/sys/t"]),
    ("evaluate: pickle-only checkpoint", [*E, "pickled", "--out", "t"]),
    ("evaluate: checkpoint with auto_map (tokenizer)", [*E, "code_tok", "--out", "t"]),
    ("evaluate: checkpoint with truncated weights", [*E, "trunc", "--out", "t"]),
    ("evaluate: checkpoint with malformed run_card.json", [*E, "badcard", "--out", "t2"]),
    ("evaluate: `--placement middle`", [*E, "ckpt", "--placement", "middle", "--out", "t3"]),
    ("evaluate: `--trigger ''`", [*E, "ckpt", "--trigger", "", "--out", "t4"]),
    ("evaluate: `--max-items 0`", [*E[:3], "ckpt", "--max-items", "0", "--out", "t5"]),
    ("evaluate: `--max-items -1`", [*E[:3], "ckpt", "--max-items", "-1", "--out", "t6"]),
    ("evaluate: `--max-items many`", [*E[:3], "ckpt", "--max-items", "many", "--out", "t7"]),
    ("evaluate: Hub id as checkpoint", [*E, "meta-llama/Llama-2-7b-hf", "--out", "t"]),
    ("world: `--out` an existing file", ["world", *Q, "--out", "notes.md"]),
    ("world: `--out` a folder of the user's", ["world", *Q, "--out", "mine"]),
    ("world: `--out` a checkpoint folder", ["world", *Q, "--out", "finished"]),
    ("world: `--out ''`", ["world", *Q, "--out", ""]),
    ("world: `--out` under a read-only folder", ["world", *Q, "--out", "/proc/sys/s"]),
    ("world: malformed world/stage.json", ["world", *Q, "--out", "badstage"]),
    ("world: `--set world.n_forget_entities=1`", ["world", *Q, "--out", "s", "--set", "world.n_forget_entities=1"]),
    ("world: `--set world.seed=-1`", ["world", *Q, "--out", "s", "--set", "world.seed=-1"]),
    (
        "world: `--set world.n_general_passages=abc`",
        ["world", *Q, "--out", "s", "--set", "world.n_general_passages=abc"],
    ),
    ("pretrain: θ_o's run_card.json malformed", ["pretrain", *Q, "--out", "badcard_study"]),
    ("pretrain: `--set pretrain.lr=abc`", ["pretrain", *Q, "--out", "s", "--set", "pretrain.lr=abc"]),
    ("pretrain: `--set pretrain.steps=-1`", ["pretrain", *Q, "--out", "s", "--set", "pretrain.steps=-1"]),
    ("pretrain: `--set pretrain.steps=0`", ["pretrain", *Q, "--out", "s", "--set", "pretrain.steps=0"]),
    ("pretrain: `--set pretrain.min_lr_ratio=2`", ["pretrain", *Q, "--out", "s", "--set", "pretrain.min_lr_ratio=2"]),
    ("pretrain: `--set model.n_heads=3`", ["pretrain", *Q, "--out", "s", "--set", "model.n_heads=3"]),
    ("pretrain: `--set model.n_kv_heads=3`", ["pretrain", *Q, "--out", "s", "--set", "model.n_kv_heads=3"]),
    (
        "pretrain: `--set model.max_positions=64` (< seq_len)",
        ["pretrain", *Q, "--out", "s", "--set", "model.max_positions=64"],
    ),
    ("pretrain: `--set pretrain.wd=0.5` (unknown)", ["pretrain", *Q, "--out", "s", "--set", "pretrain.wd=0.5"]),
    ("study: `--set unlearn.lr=fast`", ["study", *Q, "--out", "s", "--set", "unlearn.lr=fast", "--figures", ""]),
    ("study: `--set unlearn.steps=0`", ["study", *Q, "--out", "s", "--set", "unlearn.steps=0", "--figures", ""]),
    ("study: `--jobs -1`", ["study", *Q, "--out", "s", "--jobs", "-1"]),
    ("study: `--recipes` missing", ["study", "--quick", "--recipes", "nope", "--out", "s"]),
    ("study: `--figures` an existing file", ["study", *Q, "--out", "s", "--figures", "notes.md"]),
    ("study: `--out` a folder of the user's", ["study", *Q, "--out", "mine"]),
    ("figures: `--out` not a finished study", ["figures", "--out", "study", "--figures", "f"]),
    ("figures: `--figures` an existing file", ["figures", "--out", "study", "--figures", "notes.md"]),
    ("figures: `--figures ''`", ["figures", "--out", "study", "--figures", ""]),
]


def run(argv: list[str]) -> tuple[object, str, int]:
    """Exit status, the last line printed on stderr, and how many lines it printed."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
    except SystemExit as e:  # argparse's own refusal: its usage line, then one error line
        rc = e.code
    except BaseException as e:  # noqa: BLE001 — a traceback is what this table hunts
        rc, err = "TRACEBACK", io.StringIO(f"{type(e).__name__}: {e}")
    # progress bars and argparse's usage block are not messages
    lines = [
        ln
        for ln in err.getvalue().splitlines()
        if ln.strip() and "it/s]" not in ln and not ln.startswith(("usage:", " "))
    ]
    return rc, (lines[-1] if lines else "(nothing printed)"), len(lines)


def tabulate(scratch: Path) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
    build(scratch / "base")
    before = _tree(scratch / "base")
    print("| # | input tried | exit | message | files of the user's changed or lost |\n|---|---|---|---|---|")
    for i, (what, argv) in enumerate(CASES, 1):
        case = scratch / f"case{i:03d}"  # a fresh copy each: one case cannot spoil the next
        shutil.copytree(scratch / "base", case)
        os.chdir(case)
        if argv == "DEVICE":
            os.environ["SINKPROBE_DEVICE"], argv = "gpu0", [*U, "--out", "m"]
        rc, msg, n = run(argv)
        os.environ.pop("SINKPROBE_DEVICE", None)
        after = _tree(case)
        lost = sorted(k for k in before if before[k] != after.get(k))
        msg = msg.replace(str(case) + "/", "").replace(str(ROOT) + "/", "").replace("|", "\\|")
        print(
            f"| {i} | {what} | {rc} | {msg}{'' if n == 1 else f' ({n} lines)'} | {', '.join(lost) or 'none'} |",
            flush=True,
        )


if __name__ == "__main__":  # `study` spawns workers that import this file: they must not rerun it
    tabulate(Path(sys.argv[1]).absolute())
