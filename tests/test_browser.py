"""The report and a figure render in headless Chromium: plotly draws its SVG, the page throws no
uncaught error, and a screenshot is not blank. Skipped where no Chromium is installed."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from tiny_study import tiny_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on PATH: apt-get install -y chromium to run the browser tests"
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=10000",  # let plotly finish drawing before the DOM is dumped / the shot taken
]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return tiny_study(tmp_path_factory)


def chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"  # a fresh profile per run
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def png_pixels(path: Path) -> bytes:
    """The PNG's decompressed scanlines (filter bytes included): enough to tell a blank image."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(idat)


@pytest.mark.parametrize("page", ["report.html", "figures/fig3_delta_attention.html"])
def test_page_renders_plots_without_errors(study, tmp_path, page):
    run = chromium(study.folder / page, tmp_path, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Uncaught" not in run.stderr, [l for l in run.stderr.splitlines() if "Uncaught" in l]
    assert run.stdout.count('class="main-svg"') >= 2  # plotly drew at least one plot (two svg layers each)
    if page == "report.html":
        assert run.stdout.count('class="plot-container plotly"') >= 5  # every main figure is drawn


def test_screenshot_is_not_blank(study, tmp_path):
    shot = tmp_path / "fig2.png"
    run = chromium(
        study.folder / "figures" / "fig2_ue_be.html", tmp_path, f"--screenshot={shot}", "--window-size=900,700"
    )
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert len(set(png_pixels(shot))) > 16  # a blank page decompresses to a handful of byte values


def test_static_pngs_are_images(study):
    pngs = sorted(study.figures.glob("*.png"))
    assert pngs, "make_figures wrote no PNG although Chromium is installed"
    for p in pngs:
        assert len(set(png_pixels(p))) > 16, p.name
