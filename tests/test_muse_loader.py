"""MUSE-layout loader on fixture folders written in the real layout."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sinkprobe.data.muse import load_muse
from sinkprobe.data.types import QAItem, VerbMemItem

FORGET_TXT = "Harry went to school.\nHe liked it.\n\nRon came along.\n \nThe end.\n"
RETAIN_TXT = "Bilbo had a birthday.\n\n\n\nGandalf arrived."
QA = [{"question": "Who went to school?", "answer": "Harry"}]
ICL = [{"question": "Who arrived?", "answer": "Gandalf"}]
VERB = [{"prompt": "Harry went", "gt": " to school."}]


def write_muse(root: Path, *, retain2: bool = True, retain_qa_name: str = "retain_qa") -> Path:
    files = {
        "raw/forget.txt": FORGET_TXT,
        "raw/retain1.txt": RETAIN_TXT,
        "knowmem/forget_qa.json": json.dumps(QA),
        "knowmem/forget_qa_icl.json": json.dumps(ICL),
        f"knowmem/{retain_qa_name}.json": json.dumps([{"question": "Whose birthday?", "answer": "Bilbo"}]),
        f"knowmem/{retain_qa_name}_icl.json": json.dumps(ICL),
        "verbmem/forget.json": json.dumps(VERB),
    }
    if retain2:
        files["raw/retain2.txt"] = "Frodo left the Shire."
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_loads_muse_layout(tmp_path):
    corpus = load_muse(write_muse(tmp_path))
    # passages are blank-line-separated paragraphs, stripped; single newlines stay inside
    assert corpus.forget.passages == ("Harry went to school.\nHe liked it.", "Ron came along.", "The end.")
    assert corpus.retain.passages == ("Bilbo had a birthday.", "Gandalf arrived.")
    assert corpus.general == ("Frodo left the Shire.",)
    assert corpus.forget.knowmem == (QAItem("Who went to school?", "Harry"),)
    assert corpus.forget.knowmem_icl == (QAItem("Who arrived?", "Gandalf"),)
    assert corpus.forget.verbmem == (VerbMemItem("Harry went", " to school."),)
    assert corpus.retain.knowmem == (QAItem("Whose birthday?", "Bilbo"),)
    assert corpus.retain.verbmem == ()
    assert (corpus.forget.name, corpus.retain.name) == ("forget", "retain")


def test_retain2_is_optional_and_old_qa_names_work(tmp_path):
    corpus = load_muse(write_muse(tmp_path, retain2=False, retain_qa_name="retain2_qa"))
    assert corpus.general == ()
    assert corpus.retain.knowmem == (QAItem("Whose birthday?", "Bilbo"),)


def test_raw_json_list_of_documents(tmp_path):
    root = write_muse(tmp_path)
    (root / "raw/forget.txt").unlink()
    (root / "raw/forget.json").write_text(json.dumps(["Book one.\n\nPart two.", "Book two."]))
    assert load_muse(root).forget.passages == ("Book one.", "Part two.", "Book two.")


def test_hugging_face_parquet_layout(tmp_path):
    def shard(name: str, rows: list, part: int = 0, of: int = 1) -> None:
        path = tmp_path / f"{name}-{part:05d}-of-{of:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(path)

    shard("raw/forget", [{"text": "Harry went to school."}], 0, 2)
    shard("raw/forget", [{"text": "Ron came along.\n\nThe end."}], 1, 2)
    shard("raw/retain1", [{"text": RETAIN_TXT}])
    shard("knowmem/forget_qa", QA)
    shard("knowmem/forget_qa_icl", ICL)
    shard("knowmem/retain_qa", QA)
    shard("knowmem/retain_qa_icl", ICL)
    shard("verbmem/forget", VERB)
    corpus = load_muse(tmp_path)
    assert corpus.forget.passages == ("Harry went to school.", "Ron came along.", "The end.")
    assert corpus.forget.knowmem_icl == (QAItem("Who arrived?", "Gandalf"),)
    assert corpus.forget.verbmem == (VerbMemItem("Harry went", " to school."),)


def test_missing_folder_names_path_and_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_muse(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)
    assert "raw/forget" in str(e.value) and "verbmem/forget" in str(e.value)


def test_missing_files_are_all_named(tmp_path):
    root = write_muse(tmp_path)
    (root / "verbmem/forget.json").unlink()
    (root / "knowmem/forget_qa_icl.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing: knowmem/forget_qa_icl, verbmem/forget"):
        load_muse(root)


def test_empty_raw_text_names_the_file(tmp_path):
    root = write_muse(tmp_path)
    (root / "raw/retain1.txt").write_text("\n \n\n")
    with pytest.raises(ValueError, match=r"retain1\.txt has no text"):
        load_muse(root)


def test_empty_qa_list_names_the_file(tmp_path):
    root = write_muse(tmp_path)
    (root / "knowmem/forget_qa.json").write_text("[]")
    with pytest.raises(ValueError, match=r"forget_qa\.json has no entries"):
        load_muse(root)


def test_invalid_json_names_the_file(tmp_path):
    root = write_muse(tmp_path)
    (root / "verbmem/forget.json").write_text('[{"prompt": "a", ')
    with pytest.raises(ValueError, match=r"verbmem/forget\.json is not valid JSON"):
        load_muse(root)


def test_not_a_list_names_the_file(tmp_path):
    root = write_muse(tmp_path)
    (root / "knowmem/forget_qa.json").write_text(json.dumps({"question": "q", "answer": "a"}))
    with pytest.raises(ValueError, match=r"forget_qa\.json should hold a JSON list"):
        load_muse(root)


def test_malformed_entry_names_file_and_index(tmp_path):
    root = write_muse(tmp_path)
    (root / "knowmem/forget_qa.json").write_text(json.dumps(QA + [{"question": "q", "answr": "typo"}]))
    with pytest.raises(
        ValueError, match=r"forget_qa\.json, entry 1: expected an object with string fields question, answer"
    ):
        load_muse(root)
    (root / "knowmem/forget_qa.json").write_text(json.dumps(QA))
    (root / "verbmem/forget.json").write_text(json.dumps([{"prompt": "p", "gt": 3}]))
    with pytest.raises(ValueError, match=r"verbmem/forget\.json, entry 0"):
        load_muse(root)
