"""Shared fixtures: a tiny world, its tokenizer and a tiny θ_o trained once per session."""

from __future__ import annotations

import pytest
import torch

from sinkprobe.data.synthetic import WorldConfig, build_world
from sinkprobe.data.tokenizer import train_tokenizer
from sinkprobe.models.io import save_checkpoint
from sinkprobe.training.pretrain import ModelConfig, PretrainConfig, pretrain_original

TINY_WORLD = WorldConfig(seed=1, n_forget_entities=4, n_retain_entities=4, n_general_passages=20)
TINY_MODEL = ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=128, max_positions=256)
TINY_PRETRAIN = PretrainConfig(steps=120, batch_size=8, seq_len=256, lr=3e-3, warmup_steps=10, save_every=40)


@pytest.fixture(scope="session")
def tiny_world():
    return build_world(TINY_WORLD)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_world):
    return train_tokenizer(tiny_world.pretraining_documents(), vocab_size=512)


@pytest.fixture(scope="session")
def tiny_original(tiny_world, tiny_tokenizer, tmp_path_factory):
    """(folder, model, summary) of a tiny θ_o trained from scratch on the tiny world."""
    torch.set_num_threads(2)
    state = tmp_path_factory.mktemp("pretrain_state")
    model, summary = pretrain_original(
        tiny_world.pretraining_documents(), tiny_tokenizer, TINY_MODEL, TINY_PRETRAIN, state, progress=False
    )
    folder = save_checkpoint(model, tiny_tokenizer, tmp_path_factory.mktemp("ckpt") / "original", {"kind": "original"})
    return folder, model, summary


@pytest.fixture(scope="session")
def sentencepiece_tokenizer(tiny_world):
    """A SentencePiece-style tokenizer built offline, as Llama-2's and Mistral's: a Unigram model
    over a Metaspace pre-tokenizer ("▁" marks a space, one is prepended to the text), BOS added
    by the post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.UnigramTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(tiny_world.pretraining_documents(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )


# Integration tests: whole commands and studies, notebooks, a browser, two processes, the real
# base. `pytest -m "not integration"` runs the fast unit tests alone; the README's command runs all.
INTEGRATION_MODULES = {
    "test_study.py",
    "test_study_outputs.py",
    "test_notebooks.py",
    "test_browser.py",
    "test_distributed.py",
    "test_base.py",
    "test_cli.py",
    "test_reliability.py",
}


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "integration: a whole command, study, notebook, browser or the real base")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.path.name in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)
