import pytest

from sinkprobe.data.synthetic import ATTRIBUTES, WorldConfig, build_world
from sinkprobe.data.tokenizer import load_tokenizer, train_tokenizer
from sinkprobe.data.types import Book, UnlearningCorpus


def test_same_seed_gives_byte_identical_world():
    a, b = build_world(WorldConfig(seed=3)), build_world(WorldConfig(seed=3))
    assert a.to_json() == b.to_json()
    assert a.sha256() == b.sha256()
    assert build_world(WorldConfig(seed=4)).sha256() != a.sha256()


def test_default_world_sizes_and_disjoint_books():
    w = build_world()
    # ≥100 QA items per split (issue 2): 25 test entities × 5 attributes.
    assert len(w.forget.knowmem) == 125 and len(w.retain.knowmem) == 125
    assert len(w.forget.verbmem) == 25 and len(w.forget.knowmem_icl) == 3
    forget_names = {q.question for q in w.forget.knowmem}
    assert not forget_names & {q.question for q in w.retain.knowmem}
    # ICL examples are about an entity that is not in the test set.
    assert not {q.question for q in w.forget.knowmem_icl} & forget_names


def test_every_test_fact_is_in_the_book_and_verbmem_continues_a_passage():
    w = build_world(WorldConfig(seed=2, n_forget_entities=5, n_retain_entities=5, n_general_passages=3))
    text = "\n".join(w.forget.passages)
    for q in w.forget.knowmem:
        assert f"Question: {q.question}\nAnswer: {q.answer}" in text
    for v in w.forget.verbmem:
        assert any(p == v.prompt + v.gt for p in w.forget.passages)
    assert len(w.forget.knowmem) == 4 * len(ATTRIBUTES)


def test_corpus_json_round_trip():
    w = build_world(WorldConfig(seed=5, n_forget_entities=3, n_retain_entities=3, n_general_passages=2))
    assert UnlearningCorpus.from_json(w.to_json()) == w


def test_empty_book_and_too_small_world_are_clear_errors():
    with pytest.raises(ValueError, match="no text"):
        Book(name="forget", passages=("  ",))
    with pytest.raises(ValueError, match="more entities"):
        build_world(WorldConfig(n_forget_entities=1))


def test_tokenizer_round_trip_and_special_tokens(tmp_path, tiny_world):
    tok = train_tokenizer(tiny_world.pretraining_documents(), vocab_size=400)
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = tiny_world.forget.passages[0]
    ids = loaded(text).input_ids
    assert ids[0] == loaded.bos_token_id and loaded.eos_token_id not in ids
    assert loaded.decode(ids, skip_special_tokens=True) == text
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    assert loaded(text).input_ids == tok(text).input_ids


def test_load_tokenizer_wrong_path_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        load_tokenizer(tmp_path / "nowhere")
