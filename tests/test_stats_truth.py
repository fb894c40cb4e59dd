"""Stats that tell the truth: what the score is, which run made them, layers in model order, an honest ratio plot."""

from __future__ import annotations

import json
import pathlib

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.cli import main
from tfcompress.report import plot_stats, render_html
from tfcompress.stats import CompressionStats, LayerStats


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 1, name="first"),  # 1x1: spatial SVD cannot take it
            keras.layers.Conv2D(16, 3, padding="same", name="middle"),
            keras.layers.Conv2D(16, 1, name="pointwise"),  # 1x1 again
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, name="head"),  # Dense: manual only under spatial SVD
        ],
        name="truth_cnn",
    )


def _auto(target: float = 0.6) -> tfc.SpatialSvdParameters:
    select = tfc.GreedySelectionParameters(target, num_comp_ratio_candidates=4)
    return tfc.SpatialSvdParameters(tfc.Mode.auto, tfc.SpatialSvdParameters.AutoModeParams(select))


def test_stats_name_the_score_the_model_and_the_versions() -> None:
    def accuracy(model: keras.Model, iterations: object) -> float:
        return 0.5

    _, stats = tfc.compress_model(_model(), accuracy, None, "spatial_svd", "mac", _auto(), verbose=0)
    assert stats.score_name == "accuracy (eval callback)"
    assert stats.model_name == "truth_cnn"
    assert stats.versions["tfcompress"] == tfc.__version__ and stats.versions["keras"] == keras.__version__
    assert "tensorflow" in stats.versions and stats.created.endswith("UTC")
    text = str(stats)
    assert "accuracy (eval callback): baseline 0.5000 -> compressed 0.5000" in text
    assert "truth_cnn" in text and f"tfcompress {tfc.__version__}" in text
    assert "  accuracy  " not in text  # the score is not called accuracy unless it is the callback's name
    _, anonymous = tfc.compress_model(_model(), lambda m, it: 0.5, None, "spatial_svd", "mac", _auto(), verbose=0)
    assert anonymous.score_name == "eval callback score"
    again = CompressionStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again == stats


def test_layers_not_compressed_are_listed_in_model_order() -> None:
    _, stats = tfc.compress_model(_model(), lambda m, it: 0.5, None, "spatial_svd", "mac", _auto(), verbose=0)
    order = ["first", "middle", "pointwise", "head"]
    listed = list(stats.skipped_layers)
    assert listed == [name for name in order if name in listed] and len(listed) >= 3
    assert [row.name for row in stats.per_layer_stats] == [n for n in order if n not in listed]


def test_old_stats_json_without_the_new_fields_still_loads(tmp_path: pathlib.Path) -> None:
    old = {
        "baseline_model_accuracy": 0.9,
        "compressed_model_accuracy": 0.8,
        "per_layer_stats": [
            {
                "name": "fc",
                "scheme": "svd",
                "original_shape": [64, 10],
                "rank": 4,
                "ratio": 0.3,
                "macs_before": 640,
                "macs_after": 296,
                "params_before": 650,
                "params_after": 306,
            }
        ],
    }
    (tmp_path / "old.json").write_text(json.dumps(old), encoding="utf-8")
    stats = CompressionStats.from_json(tmp_path / "old.json")
    assert stats.per_layer_stats[0].in_channels is None and stats.score_name == ""
    assert "eval score: baseline 0.9000 -> compressed 0.8000" in str(stats)


def _ratio_stats(achieved: float, target: float) -> CompressionStats:
    rows = [
        LayerStats("a", "spatial_svd", [3, 3, 8, 8], 2, 0.98, 1000, 980, 100, 98),
        LayerStats("b", "spatial_svd", [3, 3, 8, 8], 1, 0.2, 1000, 200, 100, 20),
    ]
    return CompressionStats(
        per_layer_stats=rows, target_comp_ratio=target, mac_compression_ratio=achieved, cost_metric="mac"
    )


def test_the_ratio_plot_stops_at_one_and_keeps_target_and_achieved_apart() -> None:
    figure = plot_stats(_ratio_stats(0.5, 0.5), "ratios")
    ax = figure.axes[0]
    assert ax.get_xlim()[1] == pytest.approx(1.0)
    assert all(patch.get_width() <= 1.0 for patch in ax.patches)
    lines = {line.get_label(): line for line in ax.get_lines()}
    target, achieved = lines["model target 0.50"], lines["model achieved 0.500"]
    assert target.get_color() != achieved.get_color()
    assert (target.get_linestyle(), target.get_linewidth()) != (achieved.get_linestyle(), achieved.get_linewidth())


def test_the_report_shows_the_run_the_score_name_and_the_fine_tuned_score() -> None:
    stats = _ratio_stats(0.6, 0.6)
    stats.model_name, stats.created, stats.versions = "my_model", "2026-12-05 12:00 UTC", {"tfcompress": "9.9"}
    stats.score_name = "top1 (eval callback)"
    stats.baseline_model_accuracy, stats.compressed_model_accuracy = 0.9, 0.85
    stats.finetuned_model_accuracy, stats.finetune_note = 0.88, "after 3 epochs"
    page = render_html(stats)
    assert "my_model" in page and "2026-12-05 12:00 UTC, tfcompress 9.9" in page
    assert "top1 (eval callback): baseline 0.9000 \u2192 compressed 0.8500" in page
    assert "fine-tuned score" in page and "0.8800 (after 3 epochs)" in page
    assert "fine-tuned       0.8800 (after 3 epochs)" in str(stats)


def test_the_cli_calls_a_data_free_score_output_fidelity(tmp_path: pathlib.Path) -> None:
    _model().save(tmp_path / "m.keras")
    argv = ["compress", str(tmp_path / "m.keras"), "--candidates", "3", "--target", "0.7", "--no-report", "-q"]
    assert main([*argv, "-o", str(tmp_path / "out")]) == 0
    stats = CompressionStats.from_json(tmp_path / "out" / "stats.json")
    assert stats.score_name.startswith("output fidelity (data-free")
    assert "accuracy" not in str(stats)


def test_channel_pruning_rows_are_per_layer_with_channels_and_groups() -> None:
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="p"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Conv2D(8, 3, padding="same", name="q"),
        ]
    )
    x = np.random.default_rng(0).random((16, 8, 8, 2)).astype("float32")
    CP = tfc.ChannelPruningParameters
    params = CP(x, 300, False, "manual", CP.ManualModeParams([("q", 0.5)]))
    small, stats = tfc.compress_model(model, lambda m, _: 0.0, None, "channel_pruning", "mac", params, verbose=0)
    rows = {row.name: row for row in stats.per_layer_stats}
    assert list(rows) == ["p", "bn", "q"]  # the producer, the per-channel layer on the way, the consumer
    assert (rows["p"].in_channels, rows["p"].out_channels) == ([2, 2], [12, 6])
    assert (rows["bn"].in_channels, rows["bn"].out_channels) == ([12, 6], [12, 6])
    assert (rows["q"].in_channels, rows["q"].out_channels) == ([12, 6], [8, 8])
    assert rows["p"].group.startswith("q (out)") and rows["q"].group == "q (in)"
    assert rows["p"].macs_after < rows["p"].macs_before and rows["p"].params_after == 6 * (3 * 3 * 2 + 1)
    assert all(row.rank is None for row in rows.values())
    assert "p" not in stats.skipped_layers  # it lost half its filters: it is not "kept at full size"
    assert small.get_layer("p").filters == 6
