"""Every analysis notebook runs top to bottom on the tiny study (SINKPROBE_STUDY points at it)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from tiny_study import REPO, tiny_study

NOTEBOOKS = sorted((REPO / "analysis_notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return tiny_study(tmp_path_factory)


def test_there_are_four_notebooks_without_stored_outputs():
    assert [p.name for p in NOTEBOOKS] == [
        "01_attention_maps.ipynb",
        "02_position_logits.ipynb",
        "03_sinks_and_value_norms.ipynb",
        "04_ue_be_ut_table.ipynb",
    ]
    for path in NOTEBOOKS:
        cells = nbformat.read(path, as_version=4).cells
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c.cell_type == "code"), (
            path.name
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_the_tiny_study(path: Path, study, monkeypatch):
    monkeypatch.setenv("SINKPROBE_STUDY", str(study.folder))  # the kernel inherits this process's environment
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
