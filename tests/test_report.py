"""Figures and the HTML report (issue: pictures)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from siamindex.build import BuildSettings, build_index
from siamindex.cli import cli
from siamindex.report import FIGURE_DPI, FIGURES, write_report
from siamindex.training import TrainConfig, train

EXPECTED_SIZES = {  # figsize in inches x FIGURE_DPI
    "pairs.png": (12, 7),
    "distances.png": (12, 4.5),
    "roc.png": (12, 4.5),
    "gallery.png": (1.6 * 7, 1.8 * 8),
    "projection.png": (13, 6),
    "membership.png": (13, 5),
    "training.png": (7, 4.5),
}


@pytest.fixture(scope="module")
def reported(tmp_path_factory, small_idx_dir):
    folder = tmp_path_factory.mktemp("report")
    config = TrainConfig(
        architecture="cnn", epochs=1, embedding_dim=16, data_dir=str(small_idx_dir)
    )
    trained = train(config, folder / "enc.keras", progress=False)
    index, _ = build_index(
        BuildSettings(
            encoder=trained.path, index=folder / "idx", data_dir=small_idx_dir, progress=False
        )
    )
    return index, write_report(index, folder / "out")


def test_every_figure_is_a_non_blank_png_of_the_expected_size(reported):
    index, written = reported
    names = [path.name for path in written]
    assert names == [name for name, _, _ in FIGURES] + ["report.html"]
    for path in written[:-1]:
        with Image.open(path) as image:
            assert image.format == "PNG"
            width, height = EXPECTED_SIZES[path.name]
            assert image.size == (round(width * FIGURE_DPI), round(height * FIGURE_DPI)), path.name
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert pixels.std() > 20, f"{path.name} looks blank"


def test_training_curves_come_from_the_bundled_report(reported):
    index, _ = reported
    assert index.training_report()["history"]["loss"]


def test_html_embeds_every_figure_and_links_nothing(reported):
    _, written = reported
    page = written[-1].read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len(FIGURES)
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert not re.search(r'(href|src)="(?!data:)', page)
    assert "http://" not in page and "https://" not in page


def test_query_show_writes_a_picture(reported, tmp_path):
    index, _ = reported
    result = CliRunner().invoke(
        cli,
        [
            "query",
            "mnist:test:0-3",
            "--index",
            str(index.path),
            "-k",
            "4",
            "--show",
            str(tmp_path / "q.png"),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "q.png") as image:
        assert image.size == (round(1.6 * 5 * FIGURE_DPI), round(1.8 * 4 * FIGURE_DPI))
        assert np.asarray(image.convert("L")).std() > 20


def test_report_cli(reported, tmp_path):
    index, _ = reported
    result = CliRunner().invoke(
        cli, ["report", "--index", str(index.path), "--out", str(tmp_path)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.html").is_file() and (tmp_path / "membership.png").is_file()


def test_without_matplotlib_the_command_says_how_to_install_it(reported, tmp_path):
    index, _ = reported
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from siamindex.cli import cli\n"
        f"cli(['report', '--index', r'{index.path}', '--out', r'{tmp_path}'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 1
    assert "pip install 'siamindex[viz]'" in done.stderr and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.browser
def test_report_renders_in_headless_chromium(reported, tmp_path):
    from conftest import chromium_or_skip

    browser = chromium_or_skip()
    _, written = reported
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1400,2200",
            f"--screenshot={shot}",
            written[-1].as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    # The figures bring colour (matplotlib's blue/orange histograms, viridis); text alone is grey.
    coloured = np.abs(pixels[..., 0] - pixels[..., 2]) > 40
    assert coloured.mean() > 0.01
