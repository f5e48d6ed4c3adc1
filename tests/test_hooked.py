"""The bridge layer: tiny random Llama / Mistral (GQA) / GPT-2 checkpoints opened as bridges.

``make_checkpoint`` and the ``tiny_models`` fixture are also used by test_analysis.py and test_plots.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
)

from sinkprobe.analysis.value_norms import collect_value_norms
from sinkprobe.models.hooked import expand_kv_heads, open_bridge, open_trio, value_hook

FAMILIES = ("llama", "mistral", "gpt2")
VOCAB = 100


def word_tokenizer(vocab: int = VOCAB, extra: str = "") -> PreTrainedTokenizerFast:
    words = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3} | {f"w{i}{extra}": i for i in range(4, vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def make_checkpoint(folder: Path, family: str, seed: int = 0, n_layers: int = 2, tokenizer=None) -> Path:
    """A random tiny checkpoint (d_model 64, 4 heads; Mistral with 2 KV heads) with a tokenizer."""
    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    rope = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        max_position_embeddings=128,
        **common,
    )
    config, cls = {
        "llama": (lambda: LlamaConfig(num_key_value_heads=4, **rope), LlamaForCausalLM),
        "mistral": (lambda: MistralConfig(num_key_value_heads=2, sliding_window=None, **rope), MistralForCausalLM),
        "gpt2": (lambda: GPT2Config(n_embd=64, n_layer=n_layers, n_head=4, n_positions=128, **common), GPT2LMHeadModel),
    }[family]
    torch.manual_seed(seed)
    model = cls(config())
    with torch.no_grad():  # random init gives near-uniform attention; sharper weights make real sinks
        for name, p in model.named_parameters():
            if p.dim() == 2 and "emb" not in name and "wte" not in name and "wpe" not in name:
                p.mul_(3.0)
    model.save_pretrained(folder)
    (tokenizer or word_tokenizer()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {f: make_checkpoint(root / f, f) for f in FAMILIES}


def sample_ids(n: int, lo: int = 5, hi: int = 12, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g)
    return [[1] + torch.randint(4, VOCAB, (int(t) - 1,), generator=g).tolist() for t in lengths]


@pytest.mark.parametrize("family", FAMILIES)
def test_bridge_logits_equal_hf_logits(tiny_models, family):
    folder = tiny_models[family]
    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    bridge = open_bridge(folder)
    ids = torch.tensor(sample_ids(3, 9, 10))
    with torch.no_grad():
        ref = hf(ids).logits
        got = bridge(ids, return_type="logits")
    assert not bridge.compatibility_mode  # raw numerics: no folding / centring
    assert torch.allclose(got, ref, atol=1e-4, rtol=0)


def test_hook_v_holds_kv_heads_and_expands_per_query_head(tiny_models):
    bridge = open_bridge(tiny_models["mistral"])
    _, cache = bridge.run_with_cache(torch.tensor([[1, 5, 6, 7]]), names_filter=[value_hook(0)], stop_at_layer=1)
    v = cache[value_hook(0)]
    assert v.shape == (1, 4, 2, 16)  # [batch pos kv_head d_head]
    per_head = expand_kv_heads(v, 4)
    assert per_head.shape == (1, 4, 4, 16)
    assert torch.equal(per_head[:, :, 0], per_head[:, :, 1]) and torch.equal(per_head[:, :, 2], v[:, :, 1])


def _hf_value_outputs(folder: Path, ids: torch.Tensor, family: str) -> list[torch.Tensor]:
    """Per layer ``[batch pos kv_head d_head]`` straight from the HF modules."""
    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    outs: list[torch.Tensor] = []
    if family == "gpt2":
        d = hf.config.n_embd
        mods = [blk.attn.c_attn for blk in hf.transformer.h]
        pick = lambda out: out[..., 2 * d : 3 * d]  # noqa: E731  (c_attn is q | k | v)
        kv = hf.config.n_head
    else:
        mods = [layer.self_attn.v_proj for layer in hf.model.layers]
        pick = lambda out: out  # noqa: E731
        kv = hf.config.num_key_value_heads
    handles = [m.register_forward_hook(lambda mod, inp, out: outs.append(pick(out))) for m in mods]
    with torch.no_grad():
        hf(ids)
    for h in handles:
        h.remove()
    return [o.unflatten(-1, (kv, -1)) for o in outs]


@pytest.mark.parametrize("family", FAMILIES)
def test_value_norms_equal_hf_value_projection_norms(tiny_models, family):
    seqs = sample_ids(3, 8, 9)
    values = _hf_value_outputs(tiny_models[family], torch.tensor(seqs), family)
    bridge = open_bridge(tiny_models[family])
    for layer, v in enumerate(values):
        expected = v.norm(dim=-1).repeat_interleave(4 // v.shape[2], dim=-1)  # [batch pos head]
        got = collect_value_norms(bridge, seqs, layer)
        assert torch.allclose(got, expected, atol=1e-5)


def test_value_norms_equal_the_training_reader(tiny_models):
    """DESIGN: the v_proj reader of training and hook_v here compute the same quantity."""
    from sinkprobe.training.objectives.value_norm import per_head_value_norms

    seqs = sample_ids(2, 7, 8)
    (v0, _) = _hf_value_outputs(tiny_models["mistral"], torch.tensor(seqs), "mistral")
    expected = per_head_value_norms(v0.flatten(-2), n_kv_heads=2, n_heads=4)
    got = collect_value_norms(open_bridge(tiny_models["mistral"]), seqs, 0)
    assert torch.allclose(got, expected, atol=1e-5)


def test_not_a_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        open_bridge(tmp_path)


def test_open_trio_accepts_one_family(tiny_models, tmp_path):
    other = make_checkpoint(tmp_path / "u", "mistral", seed=1)
    trio = open_trio(tiny_models["mistral"], other, tiny_models["mistral"])
    assert trio.unlearned.cfg.model_name == str(other.resolve())


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda d: make_checkpoint(d, "llama"), "architectures"),
        (lambda d: make_checkpoint(d, "mistral", n_layers=3), "architectures"),
        (lambda d: make_checkpoint(d, "mistral", tokenizer=word_tokenizer(extra="x")), "tokenizers"),
    ],
)
def test_open_trio_refuses_a_mismatched_trio(tiny_models, tmp_path, make, problem):
    odd = make(tmp_path / "odd")
    with pytest.raises(ValueError, match=problem) as err:
        open_trio(tiny_models["mistral"], tiny_models["mistral"], odd)
    assert "\n" not in str(err.value)
