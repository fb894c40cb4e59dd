"""The plots and the self-contained HTML report (tfcompress.report, tfc.report, CompressionStats.plot)."""

from __future__ import annotations

import base64
import importlib
import io
import os
import re
import sys

import matplotlib
import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import tfcompress as tfc
from tfcompress.stats import CompressionStats, LayerStats

report_module = importlib.import_module("tfcompress.report")  # `tfc.report` is the function, not the module

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ODD_NAME = 'block<1>/conv&"2"'  # must be escaped everywhere in the HTML


def _stats() -> CompressionStats:
    layers = [
        LayerStats("conv1", "spatial_svd", [3, 3, 3, 16], 4, 0.5, 110_592, 55_296, 448, 208),
        LayerStats(ODD_NAME, "spatial_svd", [3, 3, 16, 32], 12, 0.3, 1_179_648, 353_894, 4_640, 1_760),
        LayerStats("fc", "svd", [32, 10], 4, 0.4, 320, 168, 330, 178),
    ]
    scores = {
        "conv1": {0.25: 0.61, 0.5: 0.83, 0.75: 0.9},
        ODD_NAME: {0.25: 0.8, 0.5: 0.88, 0.75: 0.91},
        "conv_kept": {0.25: 0.2, 0.5: 0.4, 0.75: 0.6},
        "fc": {0.25: 0.85, 0.5: 0.9, 0.75: 0.91},
    }
    return CompressionStats(
        baseline_model_accuracy=0.92,
        compressed_model_accuracy=0.88,
        mac_compression_ratio=0.31,
        memory_compression_ratio=0.4,
        per_layer_stats=layers,
        eval_scores=scores,
        compress_scheme="spatial_svd",
        cost_metric="mac",
        mode="auto",
        rank_select_scheme="greedy",
        target_comp_ratio=0.32,
        selected_comp_ratio=0.31,
        original_macs=1_400_000,
        compressed_macs=434_000,
        original_params=6_000,
        compressed_params=2_400,
        timings={"total_seconds": 3.0, "eval_callback_seconds": 2.5, "overhead_seconds": 0.5},
        num_eval_calls=14,
        skipped_layers={"conv_kept": "kept at full size by the selection", "<odd>": "a & b"},
        notes=["budget <filled>"],
    )


def _decode_png(data: bytes) -> tuple[int, ...]:
    assert data.startswith(PNG_SIGNATURE)
    return matplotlib.image.imread(io.BytesIO(data), format="png").shape


@pytest.mark.parametrize("kind", report_module.PLOT_KINDS)
def test_every_plot_kind_returns_a_figure_that_renders_to_png(kind: str) -> None:
    figure = _stats().plot(kind)
    assert isinstance(figure, Figure)
    assert isinstance(figure.canvas, FigureCanvasAgg)
    height, width, _channels = _decode_png(report_module.figure_png(figure))
    assert width > 300 and height > 150


def test_plots_leave_pyplot_and_rc_params_alone() -> None:
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    rc_before = dict(matplotlib.rcParams)
    for kind in report_module.PLOT_KINDS:
        report_module.figure_png(_stats().plot(kind))
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_loaded
    assert dict(matplotlib.rcParams) == rc_before


def test_plot_draws_on_a_given_axes() -> None:
    figure = Figure()
    ax = figure.add_subplot()
    assert _stats().plot("ratios", ax=ax) is figure
    assert [t.get_text() for t in ax.get_yticklabels()] == ["conv1", ODD_NAME, "fc"]
    assert _stats().plot("scores", ax=ax) is figure


def test_scores_plot_marks_each_chosen_ratio() -> None:
    figure = _stats().plot("scores")
    (ax,) = figure.axes
    stars = [line for line in ax.lines if line.get_marker() == "*" and len(line.get_xdata()) == 1]
    assert sorted(float(line.get_xdata()[0]) for line in stars) == [0.3, 0.4, 0.5]


def test_scores_plot_of_many_layers_uses_a_depth_colorbar() -> None:
    stats = _stats()
    stats.eval_scores = {f"layer_{i}": {0.5: 0.5 + i / 100, 0.75: 0.9} for i in range(30)}
    figure = stats.plot("scores")
    assert len(figure.axes) == 2  # the plot and its colorbar


def test_bad_plot_requests_are_clear_errors() -> None:
    stats = _stats()
    with pytest.raises(ValueError, match="kind must be one of"):
        stats.plot("pie")
    with pytest.raises(ValueError, match="costs"):
        stats.plot("costs", ax=Figure().add_subplot())
    manual = CompressionStats(per_layer_stats=stats.per_layer_stats, mode="manual")
    with pytest.raises(ValueError, match="no eval-score table"):
        manual.plot("scores")
    with pytest.raises(ValueError, match="at least one compressed layer"):
        CompressionStats().plot("ratios")


def test_tar_stats_plot_scores_by_residual_index() -> None:
    stats = CompressionStats(baseline_model_accuracy=0.9, tar_index_scores={2: 0.5, 3: 0.8, 4: 0.88})
    (ax,) = stats.plot("scores").axes
    assert list(ax.lines[0].get_xdata()) == [2, 3, 4]


def test_html_is_self_contained_and_escapes_every_name() -> None:
    page = report_module.render_html(_stats(), title="digits <v2>")
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "href=" not in page.lower() and "url(" not in page.lower()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3  # scores, ratios, costs
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        _decode_png(base64.b64decode(source.split(",", 1)[1], validate=True))
    for name in ("conv1", "fc", "conv_kept"):
        assert name in page
    assert "block&lt;1&gt;/conv&amp;&quot;2&quot;" in page and ODD_NAME not in page
    assert "&lt;odd&gt;" in page and "a &amp; b" in page and "budget &lt;filled&gt;" in page
    assert "<title>digits &lt;v2&gt;</title>" in page


def test_html_without_eval_scores_or_layers_still_renders() -> None:
    page = report_module.render_html(CompressionStats(mode="manual"))
    assert "No eval-score table" in page and "No layer was compressed" in page
    assert "src=" not in page


def test_report_writes_the_file_and_returns_its_path(tmp_path) -> None:
    stats = _stats()
    path = tfc.report(stats, tmp_path / "report.html")
    assert path == str(tmp_path / "report.html")
    assert open(path, encoding="utf-8").read() == report_module.render_html(stats)
    assert os.listdir(tmp_path) == ["report.html"]  # no temp file left behind
    stats.to_json(tmp_path / "stats.json")  # a stats JSON path and a to_dict() work too
    assert "conv1" in open(tfc.report(str(tmp_path / "stats.json"), tmp_path / "b.html"), encoding="utf-8").read()
    assert "conv1" in open(tfc.report(stats.to_dict(), tmp_path / "c.html"), encoding="utf-8").read()


def test_report_is_atomic_when_the_rename_fails(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.html"
    path.write_text("the old report", encoding="utf-8")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        tfc.report(_stats(), path)
    assert path.read_text(encoding="utf-8") == "the old report"
    assert os.listdir(tmp_path) == ["report.html"]


def test_report_into_a_missing_folder_names_it(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tfc.report(_stats(), tmp_path / "nope" / "report.html")


def test_report_rejects_what_is_not_stats() -> None:
    with pytest.raises(TypeError, match="CompressionStats"):
        tfc.report(42, "x.html")


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[report]"')):
        _stats().plot("ratios")
    with pytest.raises(report_module.MissingDependencyError):
        tfc.report(_stats(), tmp_path / "report.html")
    assert os.listdir(tmp_path) == []


def test_chosen_point_uses_the_candidate_of_the_same_rank_or_the_curve() -> None:
    xs, ys = [0.25, 0.5, 0.75], [0.2, 0.6, 0.9]
    # rank 2 at ratio 0.45: rank 3 would cost ~0.675 > 0.5, so candidate 0.5 was evaluated at rank 2 itself
    assert report_module._score_at(0.45, 2, *map(np.asarray, (xs, ys)), 1.0) == 0.6
    # rank 40 at 0.45: rank 41 costs ~0.461 < 0.5, so candidate 0.5 had a higher rank: interpolate
    assert report_module._score_at(0.45, 40, *map(np.asarray, (xs, ys)), 1.0) == pytest.approx(0.52)
    # above the last candidate the curve runs to the baseline at ratio 1; Tucker pairs interpolate too
    assert report_module._score_at(0.875, 100, *map(np.asarray, (xs, ys)), 1.0) == pytest.approx(0.95)
    assert report_module._score_at(0.45, [2, 3], *map(np.asarray, (xs, ys)), None) == pytest.approx(0.52)
