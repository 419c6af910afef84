"""The HTML report: cells, escaping, inline figures, atomic writes, and a real render in headless Chromium."""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from srpipe.evaluation import plots
from srpipe.evaluation.html import Figure, Section, Table, format_cell, render_html, write_html
from tests.browser import CHROMIUM, is_blank, render

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: apt-get install chromium (Debian's package)"
)
CONFIG_TOML = 'run_dir = "runs/demo"\n\n[train]\nepochs = 6  # <tiny> & "quick"\n'


def tiny_png(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (3, 2)) -> bytes:
    """A small single-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def sections(tmp_path_factory: pytest.TempPathFactory) -> tuple[Section, ...]:
    """Sections with paragraphs, tables, six plots of small random arrays (one read from a file) and the config."""
    tmp_path = tmp_path_factory.mktemp("figures")
    rng = np.random.default_rng(1)
    label = rng.random((4, 4, 16, 16), dtype=np.float32)
    s2, sr = label.reshape(4, 4, 4, 4, 4, 4).mean(axis=(3, 5)), np.clip(label + 0.05, 0, 1)
    base, ours, tiles = np.array([25.0, 26.0, 27.0, 28.0]), np.array([26.0, 25.5, 28.5, 28.2]), ["a", "b", "a", "b"]
    curves = plots.save_png(
        tmp_path / "curves.png", plots.training_curves([{"epoch": e, "train_loss": 1 / (e + 1)} for e in range(3)])
    )
    return (
        Section(
            "Scores",
            paragraphs=["SR beats bicubic on 3 of 4 samples <b>not bold</b>.", "Values in dB & unitless SSIM."],
            tables=[
                Table(
                    "Mean scores",
                    ["method", "cPSNR (dB)", "SSIM", "n"],
                    [["bicubic", 26.5, 0.71234, 4], ["SR", 27.05, 0.75, 4]],
                ),
                Table("Per tile", ["tile", "gain (dB)"], [["a", 1.25], ["b", float("nan")]]),
            ],
            figures=[
                Figure(plots.metric_histograms({"cpsnr": ours}, {"cpsnr": base}), "cPSNR histograms"),
                Figure(plots.score_scatter(base, ours, tiles), "SR vs bicubic cPSNR"),
            ],
        ),
        Section("Bands", figures=[Figure(plots.band_distributions(sr, s2, label), "band values")]),
        Section(
            "Samples",
            figures=[
                Figure(plots.sample_grid(s2, label, sr, label, ours, base, tiles), "best / median / worst"),
                Figure(plots.trust_map(np.stack([sr[0], label[0]] * 4)), "trust map of sample 0"),
            ],
        ),
        Section("Training", figures=[Figure(curves, "training curves")]),
        Section("Config", paragraphs=["The run's config:"], preformatted=CONFIG_TOML),
    )


def test_format_cell_gives_floats_sensible_digits_and_leaves_ints_and_text_alone():
    cells = [28.4567, 0.712345, 123.456, 1234567.0, 0.0001234, 0.0, float("nan"), float("inf"), np.float32(0.5)]
    assert [format_cell(c) for c in cells] == [
        "28.46", "0.7123", "123.5", "1.235e+06", "1.234e-04", "0", "—", "∞", "0.5000"
    ]  # fmt: skip
    assert [format_cell(c) for c in (12, np.int64(3), True, None, "t<1>")] == ["12", "3", "True", "—", "t<1>"]


def test_report_escapes_all_text_and_loads_nothing_from_outside(sections):
    tricky = Section("<h2>", tables=[Table("x <script>", ["<th>"], [["<td>"]])])
    text = render_html("Eval <script>alert(1)</script>", [*sections, tricky])
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;not bold&lt;/b&gt;" in text and "&lt;tiny&gt; &amp; &quot;quick&quot;" in text
    links = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert links and all(link.startswith(("data:image/png;base64,", "#section-")) for link in links)
    assert text.count("<img ") == 6 and text.count('<li><a href="#section-') == 6
    assert (
        'id="section-6"' in text
        and "&lt;th&gt;" in text
        and "&lt;td&gt;" in text
        and "Table 2: Per tile" in text
        and "Figure 6: training curves" in text
    )


def test_figures_embed_their_exact_png_bytes_with_their_pixel_size(tmp_path):
    png = tiny_png()
    (tmp_path / "f.png").write_bytes(png)
    text = render_html(
        "t", [Section("s", figures=[Figure(png, "from bytes"), Figure(tmp_path / "f.png", "from file")])]
    )
    uris = re.findall(r'<img src="data:image/png;base64,([^"]+)" width="3" height="2"', text)
    assert [base64.b64decode(u) for u in uris] == [png, png]


def test_write_html_writes_nothing_when_a_figure_is_no_png_or_a_row_is_ragged(tmp_path):
    path = tmp_path / "report.html"
    with pytest.raises(ValueError, match="figure 'jpeg': its bytes is not a PNG"):
        write_html(path, "t", [Section("s", figures=[Figure(b"\xff\xd8\xff\xe0", "jpeg")])])
    with pytest.raises(ValueError, match="table 'scores': row 1 has 1 cells, the header 2"):
        write_html(path, "t", [Section("s", tables=[Table("scores", ["a", "b"], [[1, 2], [3]])])])
    assert list(tmp_path.iterdir()) == []
    assert write_html(path, "t", []) == path and path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert list(tmp_path.iterdir()) == [path]


def test_is_blank_tells_a_single_colour_page_from_a_drawn_one():
    assert is_blank(tiny_png((255, 255, 255), (64, 64)))
    drawn = Image.new("RGB", (64, 64), "white")
    drawn.paste((0, 0, 0), (0, 0, 32, 64))
    buffer = io.BytesIO()
    drawn.save(buffer, format="PNG")
    assert not is_blank(buffer.getvalue())


@needs_chromium
def test_report_with_every_kind_of_section_loads_every_image_in_chromium_without_console_errors(sections, tmp_path):
    path = write_html(tmp_path / "report.html", "Evaluation: demo run", sections)
    page = render(path)
    (tmp_path / "screenshot.png").write_bytes(page.screenshot_png)  # for a look when the test fails
    assert page.title == "Evaluation: demo run"
    assert (page.images, page.images_loaded) == (6, 6)
    assert page.errors == []
    assert not is_blank(page.screenshot_png)


@needs_chromium
def test_harness_reports_a_broken_image_a_console_error_and_an_exception(tmp_path):
    good = base64.b64encode(tiny_png()).decode()
    path = tmp_path / "broken.html"
    path.write_text(
        f"<!DOCTYPE html><html><head><title>broken</title></head><body><h1>Broken page</h1>"
        f'<img src="missing.png"><img src="data:image/png;base64,{good}">'
        '<script>console.error("boom", 42); throw new Error("kaboom");</script></body></html>'
    )
    page = render(path)
    assert (page.images, page.images_loaded) == (2, 1)
    assert any("ERR_FILE_NOT_FOUND" in e and "missing.png" in e for e in page.errors), page.errors
    assert "console.error: boom 42" in page.errors
    assert any(e.startswith("exception: Error: kaboom") for e in page.errors), page.errors
    assert len(page.errors) == 3
