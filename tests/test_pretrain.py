import pytest
import torch
from conftest import TINY_MODEL

from sinkprobe.data.tokenizer import train_tokenizer
from sinkprobe.models.io import default_device, load_checkpoint, read_run_card, save_checkpoint
from sinkprobe.training.original_loop import lr_at
from sinkprobe.training.pretrain import PackedBatches, PretrainConfig, pack_rows, pretrain_original

SMALL = PretrainConfig(steps=12, batch_size=4, seq_len=256, lr=3e-3, warmup_steps=2, save_every=4)


def test_pack_rows_by_hand():
    rows = pack_rows([[5, 6], [7], [8, 9, 10]], seq_len=7, bos=1, eos=2, pad=0)
    # [bos 5 6 eos 7 eos] fits 6 ≤ 7; [8 9 10 eos] would overflow, so it opens the next row
    assert rows == [[1, 5, 6, 2, 7, 2, 0], [1, 8, 9, 10, 2, 0, 0]]


def test_a_document_longer_than_a_row_is_split_not_fatal():
    # issue 15.7: a 261-token everyday passage drawn at epoch 60 ended `study --quick` at step ~180
    rows = pack_rows([[5, 6], [3] * 10, [7]], seq_len=5, bos=1, eos=2, pad=0)
    assert rows == [[1, 5, 6, 2, 0], [1, 3, 3, 3, 3], [1, 3, 3, 3, 3], [1, 3, 3, 2, 0], [1, 7, 2, 0, 0]]
    assert [t for r in rows for t in r if t not in (0, 1)] == [5, 6, 2, *[3] * 10, 2, 7, 2]  # every token, in order
    assert all(len(r) == 5 for r in rows)


def test_batches_are_a_function_of_the_step(tiny_world, tiny_tokenizer):
    docs = [tiny_tokenizer(d, add_special_tokens=False).input_ids for d in tiny_world.pretraining_documents()]
    a, b = PackedBatches(docs, SMALL, tiny_tokenizer), PackedBatches(docs, SMALL, tiny_tokenizer)
    assert torch.equal(a.batch(7), b.batch(7))  # no hidden state: b never saw steps 0–6
    assert (a.batch(0)[:, 0] == tiny_tokenizer.bos_token_id).all()  # every row starts with BOS


def test_lr_schedule_warmup_and_cosine_floor():
    cfg = PretrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(100, cfg) == pytest.approx(0.1)


def test_training_lowers_loss(tiny_original):
    _, _, summary = tiny_original
    losses = summary["losses"]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5
    assert summary["device"] == str(default_device())  # recorded on the θ_o card


def test_resume_equals_uninterrupted(tmp_path, tiny_world, tiny_tokenizer):
    docs = tiny_world.pretraining_documents()
    full, _ = pretrain_original(docs, tiny_tokenizer, TINY_MODEL, SMALL, tmp_path / "a", progress=False)
    pretrain_original(docs, tiny_tokenizer, TINY_MODEL, SMALL, tmp_path / "b", progress=False, stop_after=6)
    resumed, summary = pretrain_original(docs, tiny_tokenizer, TINY_MODEL, SMALL, tmp_path / "b", progress=False)
    assert len(summary["losses"]) == SMALL.steps
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name


def test_empty_corpus_is_a_clear_error(tmp_path, tiny_tokenizer):
    with pytest.raises(ValueError, match="corpus is empty"):
        pretrain_original(["", "  "], tiny_tokenizer, TINY_MODEL, SMALL, tmp_path, progress=False)


def test_checkpoint_round_trip_and_vocab_mismatch(tmp_path, tiny_original, tiny_world):
    folder, model, _ = tiny_original
    loaded, tok = load_checkpoint(folder)
    ids = torch.tensor([tok("Question: x").input_ids])
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert read_run_card(folder) == {"kind": "original"}
    big = train_tokenizer(tiny_world.pretraining_documents() + ["zq xv wj " * 50], vocab_size=900)
    assert len(big) > model.config.vocab_size
    save_checkpoint(model, big, tmp_path / "mismatch", {})
    with pytest.raises(ValueError, match="belongs to another model"):
        load_checkpoint(tmp_path / "mismatch")
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        load_checkpoint(tmp_path / "nowhere")
