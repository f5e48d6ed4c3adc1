"""The sink probes' command line: --set builds the variant, bad flags fail in one line before any work."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from sinkprobe.pipeline.study import StudyConfig

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "experiments" / "sink_emergence.py"


def test_set_changes_only_the_named_fields():
    variant = runpy.run_path(str(PROBE))["variant"]
    cfg = StudyConfig()
    model, pretrain = variant(cfg, ["pretrain.lr=3e-3", "model.n_layers=6"], steps=600, save_every=300)
    assert (pretrain.lr, pretrain.steps, pretrain.save_every) == (0.003, 600, 300)
    assert pretrain.weight_decay == cfg.pretrain.weight_decay and pretrain.seed == cfg.pretrain.seed
    assert model.n_layers == 6 and model.d_model == cfg.model.d_model


@pytest.mark.parametrize(
    "flag, message",
    [
        ("model.n_layer=6", "--set model.n_layer: unknown field; model fields are d_mlp, d_model"),
        ("pretrain.steps=10", "--set pretrain.steps: give it as --steps instead"),
        ("pretrain.save_every=5", "--set pretrain.save_every: give it as --every instead"),
        ("world.seed=1", "--set world.…: only model.* and pretrain.* fields can be changed here"),
        ("lr", "--set override 'lr' is not key=value"),
    ],
)
def test_bad_set_names_the_fix(flag, message):
    variant = runpy.run_path(str(PROBE))["variant"]
    with pytest.raises(SystemExit) as err:
        variant(StudyConfig(), [flag], steps=600, save_every=300)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_bad_set_fails_before_any_work(tmp_path):
    # The study folder does not exist: the flag must be refused before the world is read or a result written.
    out = tmp_path / "result.json"
    run = subprocess.run(
        [
            sys.executable,
            str(PROBE),
            "--study",
            str(tmp_path / "missing"),
            "--set",
            "model.n_layer=6",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and run.stderr.strip().startswith("--set model.n_layer: unknown field")
    assert not out.exists()


def test_backcopy_salad_copies_the_word_before_each_trigger():
    import random

    salad = runpy.run_path(str(PROBE))
    word_salad, trigger = salad["word_salad"], salad["TRIGGERS"][0]
    words = word_salad(random.Random(0), backcopy=0.3).removeprefix("Heard in passing: ").removesuffix(".").split()
    triggers = [i for i, w in enumerate(words) if w == trigger]
    assert len(triggers) >= 3
    assert all(words[i - 1] == words[i + 1] for i in triggers)
    assert trigger not in word_salad(random.Random(0)).split()  # plain salad: the trigger never appears


def test_backcopy_salad_with_lags_copies_the_word_k_back_after_the_kth_trigger():
    import random

    salad = runpy.run_path(str(PROBE))
    lag_of = {t: k for k, t in enumerate(salad["TRIGGERS"], start=1)}
    seen = set()
    for seed in range(20):
        words = (
            salad["word_salad"](random.Random(seed), backcopy=0.3, lags=8)
            .removeprefix("Heard in passing: ")
            .removesuffix(".")
            .split()
        )
        i = 0
        while i < len(words):
            if words[i] in lag_of:  # salad words are never triggers, so this is one; the word after it is its copy
                lag = lag_of[words[i]]
                seen.add(lag)
                assert i >= lag and words[i + 1] == words[i - lag]
                i += 1  # skip the copy: it may itself spell a trigger
            i += 1
    assert seen == set(range(1, 9))  # every lag is drawn


GPU_STUDY = ROOT / "benchmarks" / "gpu_study"


def test_gpu_study_settings_are_study_fields_and_size_the_model_as_documented(tmp_path):
    """The GPU study runs once, unattended, on a lent machine: a typo in a field must fail here.
    Its world and θ_o are what training/study/gpu.toml and docs/real_data.md say: 250 KnowMem questions per book,
    a ~46.6M-parameter Llama (d 640, 10 layers, SwiGLU 1728) over the world's own vocabulary."""
    import torch
    from transformers import LlamaForCausalLM

    from sinkprobe.pipeline.study import STUDY_CONFIGS, Study, load_study_config

    cfg = load_study_config(STUDY_CONFIGS / "gpu.toml")
    assert cfg.overrides == ()  # only the world and θ_o change; the recipes stay the CPU study's
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.pretrain.seq_len) == (640, 10, 512)
    corpus, tok, _ = Study(cfg, tmp_path, ROOT / "training" / "embedded", log=lambda _: None).world()
    assert len(corpus.forget.knowmem) == len(corpus.retain.knowmem) == 250
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg.model.llama_config(tok))
    n, v = sum(p.numel() for p in model.parameters()), len(tok)
    # by hand: per layer q,o 2·640² + k,v 2·640·320 + MLP 3·640·1728 + 2 norms of 640; tied v·640 embedding; final norm
    assert n == 10 * (2 * 640**2 + 2 * 640 * 320 + 3 * 640 * 1728 + 2 * 640) + v * 640 + 640
    assert 46.5e6 < n < 46.8e6


def test_gpu_study_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(GPU_STUDY / "run.sh")], check=True)
    subprocess.run(["bash", "-n", str(GPU_STUDY / "wheels.sh")], check=True)


def test_fit_steps_times_the_studys_own_loop_and_caps_at_the_configured_steps(tmp_path):
    from sinkprobe.pipeline.study import quick_config, stage_key

    fit = runpy.run_path(str(GPU_STUDY / "fit_steps.py"))
    cfg = quick_config()  # 60 steps of a tiny θ_o
    assert fit["fitting_steps"](cfg, 210, 0.05) == 60  # 4,200 would fit: capped at the configured 60
    assert fit["fitting_steps"](cfg, 210, 7.0) == 30 and fit["fitting_steps"](cfg, 1, 7.0) == 1
    with pytest.raises(ValueError, match="must be positive"):
        fit["fitting_steps"](cfg, 0, 0.1)
    per_step = fit["seconds_per_step"](cfg, tmp_path, warmup=2, timed=3)
    assert 0 < per_step < 30
    # the world it built is the study's world stage (reused, not rebuilt), and no θ_o state is left behind
    card = (tmp_path / "world" / "stage.json").read_text()
    assert stage_key("world", cfg.world, cfg.vocab_size) in card and not (tmp_path / "states").exists()


def test_sink_input_kinds_are_the_rows_they_claim(tiny_world, tiny_tokenizer):
    tok, bos = tiny_tokenizer, tiny_tokenizer.bos_token_id
    sets = runpy.run_path(str(ROOT / "experiments" / "sink_inputs.py"))["input_sets"](tok, tiny_world, length=16, n=8)
    assert sorted(sets) == [
        "everyday",
        "everyday_no_bos",
        "forget_book",
        "forget_book_no_bos",
        "knowmem_prompts",
        "random_tokens",
        "random_tokens_no_bos",
    ]
    assert all(len(rows) == 8 for rows in sets.values())
    for name in set(sets) - {"knowmem_prompts"}:
        assert all(len(row) == 16 for row in sets[name]), name
    for name in ("knowmem_prompts", "forget_book", "everyday", "random_tokens"):
        assert all(row[0] == bos and bos not in row[1:] for row in sets[name]), name
    special = set(tok.all_special_ids)
    for name in ("forget_book_no_bos", "everyday_no_bos", "random_tokens_no_bos"):
        assert not any(special & set(row) for row in sets[name]), name
    # the book windows are the forget book's own text, in order, with or without the BOS
    book = tok(tiny_world.forget.passages[0] + "\n", add_special_tokens=False)["input_ids"]
    assert sets["forget_book"][0][1:] == book[:15] and sets["forget_book_no_bos"][0] == book[:16]


def test_rows_without_bos_are_the_study_rows_less_their_bos(tiny_tokenizer):
    from sinkprobe.training.pretrain import PackedBatches, PretrainConfig, pack_rows

    docs = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]  # BOS 1, EOS 2, PAD 0
    assert pack_rows(docs, 8, 1, 2, 0) == [[1, 5, 6, 7, 2, 8, 9, 2], [1, 10, 11, 12, 13, 2, 0, 0]]
    tok, cfg = tiny_tokenizer, PretrainConfig(steps=4, batch_size=2, seq_len=8)
    with_bos = PackedBatches(docs, cfg, tok)._rows_of_epoch(0)
    without = PackedBatches(docs, cfg, tok, row_start_bos=False)._rows_of_epoch(0)
    assert all(r[0] == tok.bos_token_id for r in with_bos)
    assert without == [r[1:] + [tok.pad_token_id] for r in with_bos]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sink_inputs.py", "MISSING", "--out", "OUT"], "MISSING is not a model folder (no config.json)"),
        (["sink_emergence.py", "--salad-share", "2", "--lags", "3", "--out", "OUT"], "--lags K needs --backcopy P > 0"),
    ],
)
def test_new_probe_entry_points_refuse_bad_input_in_one_line(tmp_path, argv, message):
    argv = [str(tmp_path / a) if a in ("MISSING", "OUT") else a for a in argv]
    run = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / argv[0]), *argv[1:]], capture_output=True, text=True
    )
    assert run.returncode == 1 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "OUT").exists()
