"""Plots of :class:`~tfcompress.CompressionStats` and a self-contained HTML report.

The plots are drawn on ``matplotlib.figure.Figure`` objects rendered by the Agg
canvas directly: nothing here touches ``matplotlib.pyplot`` or the global backend,
so importing or using this module changes no global state. matplotlib is imported
only inside the functions; it is an optional dependency
(``pip install matplotlib``, or ``pip install -e ".[report]"`` in the checkout).

Plot kinds (:func:`plot_stats`, ``CompressionStats.plot(kind)``):

==========  ==================================================================
``scores``  each layer's eval score against its compression ratio (the greedy
            table ``stats.eval_scores``), the chosen ratio marked
``ratios``  the chosen ratio of each compressed layer, in model order
``macs``    MACs of each compressed layer before and after
``params``  parameters of each compressed layer before and after
``costs``   ``macs`` and ``params`` side by side (a figure of its own: no ``ax``)
==========  ==================================================================

The HTML report (:func:`report`) embeds every plot as a base64 ``data:`` PNG next
to the stats tables, so the single file can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .atomic import write_text_atomic
from .stats import CompressionStats, _fmt_big

__all__ = ["PLOT_KINDS", "MissingDependencyError", "plot_stats", "figure_png", "render_html", "report"]

#: the kinds accepted by :func:`plot_stats` and ``CompressionStats.plot``
PLOT_KINDS = ("scores", "ratios", "macs", "params", "costs")

_INSTALL_HINT = 'pip install matplotlib (or, in the tfcompress checkout: pip install -e ".[report]")'
_BEFORE_COLOR = "#b9c4d0"
_AFTER_COLOR = "#1f6fb2"
_TARGET_COLOR = "#c0392b"
_MAX_LEGEND_LAYERS = 12


class MissingDependencyError(ImportError):
    """An optional dependency of the report (matplotlib) is not installed.

    Example:
        >>> issubclass(MissingDependencyError, ImportError)
        True
    """


def _require_matplotlib() -> Any:
    """Import matplotlib, or raise a one-line error that says how to install it."""
    try:
        import matplotlib
        import matplotlib.figure
        from matplotlib.backends import backend_agg  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            f"the tfcompress report needs matplotlib, which is not installed: {_INSTALL_HINT}"
        ) from None
    return matplotlib


def _as_stats(stats: Any) -> CompressionStats:
    if isinstance(stats, CompressionStats):
        return stats
    if isinstance(stats, Mapping):
        return CompressionStats.from_dict(dict(stats))
    if isinstance(stats, str | os.PathLike):
        return CompressionStats.from_json(stats)
    raise TypeError(
        f"expected CompressionStats, its to_dict() form or the path of a stats JSON file, got {type(stats).__name__}."
    )


def _new_figure(width: float, height: float) -> Any:
    """A Figure attached to an Agg canvas (no pyplot, no global backend)."""
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _bars_height(count: int) -> float:
    return max(2.6, 0.34 * count + 1.5)


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "\u2026" + name[-(width - 1) :]


def _model_ratio(stats: CompressionStats) -> float:
    return stats.memory_compression_ratio if stats.cost_metric == "memory" else stats.mac_compression_ratio


def _metric_words(stats: CompressionStats) -> str:
    return {"mac": "MACs", "memory": "parameters"}.get(stats.cost_metric, "cost")


def _fmt_tick(value: float) -> str:
    """Compact axis label: 250k, 1.5M, 2G."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _legend(ax: Any, own: bool, ncol: int = 1) -> None:
    """Below the plot when the figure is ours (never over the bars), else wherever the axes has room."""
    if own:
        ax.figure.legend(loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)
    else:
        ax.legend(loc="best", fontsize=8, framealpha=0.9)


def _channels_text(s: Any) -> str:
    """``"in 64->40, out 32"`` of a channel-pruned layer (what changed, and what did not)."""
    parts = []
    for label, pair in (("in", s.in_channels), ("out", s.out_channels)):
        if pair:
            parts.append(f"{label} {pair[0]}" if pair[0] == pair[1] else f"{label} {pair[0]}->{pair[1]}")
    return ", ".join(parts)


def _rank_text(rank: Any) -> str:
    if isinstance(rank, list | tuple):
        return "x".join(str(r) for r in rank)
    return "-" if rank is None else str(rank)


# ---------------------------------------------------------------- the plots


def _plot_scores(stats: CompressionStats, ax: Any) -> None:
    from matplotlib.lines import Line2D

    if not stats.eval_scores:
        if stats.tar_index_scores:
            _plot_tar_scores(stats, ax)
            return
        raise ValueError(
            "these stats have no eval-score table (manual mode, or no layer was evaluated); "
            "the 'scores' plot needs a greedy auto-mode run."
        )
    chosen = {s.name: (s.ratio, s.rank) for s in stats.per_layer_stats}
    chosen.update({name: (ratio, None) for name, ratio in stats.chosen_ratios.items()})  # channel groups
    layers = list(stats.eval_scores)
    many = len(layers) > _MAX_LEGEND_LAYERS
    if many:
        import matplotlib

        colormap = matplotlib.colormaps["viridis"]
        colors = [colormap(i / max(len(layers) - 1, 1)) for i in range(len(layers))]
    else:
        cycle = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
        cycle += ["#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"]
        colors = [cycle[i % len(cycle)] for i in range(len(layers))]
    baseline = stats.baseline_model_accuracy
    for layer, color in zip(layers, colors, strict=True):
        table = stats.eval_scores[layer]
        if not table:
            continue
        xs = np.array(sorted(table), dtype=float)
        ys = np.array([table[x] for x in sorted(table)], dtype=float)
        label = _short(layer) + ("" if layer in chosen else " (kept)")
        ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.4, color=color, label=None if many else label)
        if layer in chosen:
            ratio, rank = chosen[layer]
            ax.plot(
                [ratio],
                [_score_at(ratio, rank, xs, ys, baseline)],
                marker="*",
                markersize=13,
                color=color,
                markeredgecolor="black",
                markeredgewidth=0.8,
                linestyle="none",
                zorder=5,
            )
    handles, labels = ax.get_legend_handles_labels()
    if baseline is not None:
        ax.axhline(baseline, color="0.35", linestyle="--", linewidth=1.0)
        handles.append(Line2D([], [], color="0.35", linestyle="--", linewidth=1.0))
        labels.append(f"baseline {baseline:.4g}")
    handles.append(Line2D([], [], marker="*", markersize=11, color="white", markeredgecolor="black", linestyle="none"))
    labels.append("chosen ratio")
    ax.legend(handles, labels, loc="lower right", fontsize=8, framealpha=0.9, ncol=2 if len(labels) > 8 else 1)
    if many:
        import matplotlib
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mappable = ScalarMappable(Normalize(0, len(layers) - 1), matplotlib.colormaps["viridis"])
        colorbar = ax.figure.colorbar(mappable, ax=ax, pad=0.01)
        colorbar.set_label("layer position in the model (0 = input side)", fontsize=9)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(f"compression ratio of the layer ({_metric_words(stats)} compressed / original)")
    ax.set_ylabel(f"{stats.score_name or 'eval score'} (higher is better)")
    ax.set_title("Eval score with one layer compressed at a time", fontsize=11)
    ax.grid(True, alpha=0.3)


def _score_at(ratio: float, rank: Any, xs: np.ndarray, ys: np.ndarray, baseline: float | None) -> float:
    """Where to draw a layer's chosen ratio on its score curve.

    A candidate ratio is evaluated at the largest rank that fits in it, so when the first candidate at
    or above the chosen ratio has the chosen rank, its score is the chosen rank's score exactly. The
    cost of a single-rank decomposition grows in proportion to the rank, so rank + 1 would cost about
    ``ratio * (rank + 1) / rank``; if that is beyond the candidate, the candidate has the same rank.
    Otherwise (a rank between two candidates, or a Tucker pair) the point is interpolated on the curve,
    up to the uncompressed score at ratio 1.
    """
    index = int(np.searchsorted(xs, ratio - 1e-9, side="left"))
    if isinstance(rank, int) and rank > 0 and index < len(xs) and xs[index] < ratio * (rank + 1) / rank:
        return float(ys[index])
    if baseline is not None:
        xs, ys = np.append(xs, 1.0), np.append(ys, baseline)
    return float(np.interp(ratio, xs, ys))


def _plot_tar_scores(stats: CompressionStats, ax: Any) -> None:
    indices = sorted(stats.tar_index_scores)
    ax.plot(indices, [stats.tar_index_scores[i] for i in indices], marker="o", color=_AFTER_COLOR)
    if stats.baseline_model_accuracy is not None:
        ax.axhline(stats.baseline_model_accuracy, color="0.35", linestyle="--", linewidth=1.0, label="baseline")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("TAR residual index (all layers at the same relative residual)")
    ax.set_ylabel(f"{stats.score_name or 'eval score'} (higher is better)")
    ax.set_title("Eval score of the whole model per TAR residual index", fontsize=11)
    ax.grid(True, alpha=0.3)


def _need_layers(stats: CompressionStats, kind: str) -> None:
    if not stats.per_layer_stats:
        raise ValueError(f"the '{kind}' plot needs at least one compressed layer; these stats have none.")


def _plot_ratios(stats: CompressionStats, ax: Any, own: bool = False) -> None:
    _need_layers(stats, "ratios")
    rows = stats.per_layer_stats
    positions = np.arange(len(rows))
    ratios = [min(s.ratio, 1.0) for s in rows]
    ax.barh(positions, ratios, color=_AFTER_COLOR, height=0.65)
    for y, s in zip(positions, rows, strict=True):
        what = f"rank {_rank_text(s.rank)}" if s.rank is not None else _channels_text(s)
        inside = s.ratio > 0.55  # long bars carry their label inside, in white; short ones right of the bar
        ax.text(
            min(s.ratio, 1.0) - 0.01 if inside else s.ratio + 0.01,
            y,
            f"{s.ratio:.2f}  {what}",
            va="center",
            ha="right" if inside else "left",
            fontsize=8,
            color="white" if inside else "black",
        )
    # the achieved ratio under the target: a wide pale band, the target a thin dashed line, so both show when equal
    achieved = _model_ratio(stats)
    ax.axvline(achieved, color="0.55", linestyle="-", linewidth=5.0, alpha=0.45, label=f"model achieved {achieved:.3f}")
    if stats.target_comp_ratio is not None:
        target = stats.target_comp_ratio
        ax.axvline(target, color=_TARGET_COLOR, linestyle="--", linewidth=1.3, label=f"model target {target:.2f}")
    ax.set_yticks(positions, [_short(s.name) for s in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first layer at the top
    ax.set_xlim(0.0, 1.0)
    ax.set_xticks([0.0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel(f"chosen ratio ({_metric_words(stats)} compressed / original)")
    ax.set_title("Chosen ratio per layer (top: input side)", fontsize=11)
    _legend(ax, own, ncol=2)
    ax.grid(True, axis="x", alpha=0.3)


def _plot_cost(stats: CompressionStats, ax: Any, which: str, own: bool = False, show_names: bool = True) -> None:
    from matplotlib.ticker import FuncFormatter

    _need_layers(stats, which)
    rows = stats.per_layer_stats
    before = [s.macs_before if which == "macs" else s.params_before for s in rows]
    after = [s.macs_after if which == "macs" else s.params_after for s in rows]
    positions = np.arange(len(rows))
    ax.barh(positions - 0.2, before, height=0.38, color=_BEFORE_COLOR, label="before")
    ax.barh(positions + 0.2, after, height=0.38, color=_AFTER_COLOR, label="after")
    if show_names:
        ax.set_yticks(positions, [_short(s.name) for s in rows], fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)
    else:  # the right panel of "costs" shares the left panel's y axis
        ax.tick_params(axis="y", labelleft=False)
    ax.set_xlim(0, max(before + after + [1]) * 1.08)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: _fmt_tick(value)))
    ax.xaxis.get_major_locator().set_params(nbins=5)
    title = "MACs per sample" if which == "macs" else "parameters"
    total_before = stats.original_macs if which == "macs" else stats.original_params
    total_after = stats.compressed_macs if which == "macs" else stats.compressed_params
    ax.set_title(f"{title} per layer (model: {_fmt_big(total_before)} \u2192 {_fmt_big(total_after)})", fontsize=10)
    if show_names:  # one legend for both panels of "costs"
        _legend(ax, own, ncol=2)
    ax.grid(True, axis="x", alpha=0.3)


def plot_stats(stats: Any, kind: str = "scores", ax: Any = None) -> Any:
    """Draw one plot of ``stats`` and return its matplotlib ``Figure``.

    Args:
        stats: a :class:`~tfcompress.CompressionStats` (or its ``to_dict()``, or the path of its JSON file).
        kind: one of :data:`PLOT_KINDS`: ``"scores"``, ``"ratios"``, ``"macs"``, ``"params"``, ``"costs"``.
        ax: a matplotlib ``Axes`` to draw on (any backend, pyplot included); by default a new
            ``Figure`` on an Agg canvas is made. ``"costs"`` draws two panels and takes no ``ax``.

    Returns:
        The ``Figure`` (``ax.figure`` when ``ax`` is given).

    Example:
        >>> from tfcompress.stats import CompressionStats, LayerStats
        >>> stats = CompressionStats(mac_compression_ratio=0.5, target_comp_ratio=0.5, cost_metric="mac",
        ...     per_layer_stats=[LayerStats("conv", "spatial_svd", [3, 3, 8, 16], 4, 0.45, 9000, 4050, 1168, 400)],
        ...     eval_scores={"conv": {0.25: 0.7, 0.5: 0.9, 0.75: 0.95}}, baseline_model_accuracy=0.96)
        >>> figure = plot_stats(stats, "scores")
        >>> len(figure.axes)
        1
    """
    stats = _as_stats(stats)
    if kind not in PLOT_KINDS:
        raise ValueError(f"kind must be one of {list(PLOT_KINDS)}, got {kind!r}.")
    _require_matplotlib()
    count = len(stats.per_layer_stats)
    if kind == "costs":
        if ax is not None:
            raise ValueError(
                "kind='costs' draws two panels on a figure of its own; pass ax=None or use 'macs'/'params'."
            )
        _need_layers(stats, "costs")
        figure = _new_figure(10.0, _bars_height(count))
        left, right = figure.subplots(1, 2, sharey=True)
        _plot_cost(stats, left, "macs", own=True)
        _plot_cost(stats, right, "params", own=True, show_names=False)
        return figure
    own = ax is None
    if own:
        if kind == "scores":
            many = len(stats.eval_scores) > _MAX_LEGEND_LAYERS
            figure = _new_figure(9.0 if many else 8.0, 4.8)
        else:
            figure = _new_figure(8.0, _bars_height(count))
        ax = figure.add_subplot()
    drawers = {
        "scores": _plot_scores,
        "ratios": lambda s, a: _plot_ratios(s, a, own),
        "macs": lambda s, a: _plot_cost(s, a, "macs", own),
        "params": lambda s, a: _plot_cost(s, a, "params", own),
    }
    drawers[kind](stats, ax)
    return ax.figure


def figure_png(figure: Any, dpi: int = 100) -> bytes:
    """The PNG bytes of a matplotlib ``Figure``, rendered with the Agg canvas (no pyplot).

    Example:
        >>> from tfcompress.stats import CompressionStats, LayerStats
        >>> stats = CompressionStats(per_layer_stats=[LayerStats("fc", "svd", [64, 10], 4, 0.3, 640, 296, 650, 306)])
        >>> figure_png(plot_stats(stats, "ratios"))[:8]
        b'\\x89PNG\\r\\n\\x1a\\n'
    """
    _require_matplotlib()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)  # PNG output always renders with Agg
    return buffer.getvalue()


# ---------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #d5d9de; padding: 0.25em 0.6em; text-align: right; }
th { background: #f1f3f5; } td.name, th.name { text-align: left; font-family: ui-monospace, monospace; }
td.text, th.text { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
.note { color: #555; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str] | None, rows: list[list[Any]], text_columns: tuple[int, ...] = ()) -> str:
    """An HTML table, every value escaped; column 0 holds names, ``text_columns`` are left-aligned prose."""

    def cell(tag: str, index: int, value: Any) -> str:
        cls = ' class="name"' if index == 0 else ' class="text"' if index in text_columns else ""
        return f"<{tag}{cls}>{_esc(value)}</{tag}>"

    head = "" if header is None else "<thead><tr>" + "".join(cell("th", i, h) for i, h in enumerate(header))
    head += "" if header is None else "</tr></thead>"
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _summary_rows(stats: CompressionStats) -> list[list[Any]]:
    scheme = stats.compress_scheme + (f" / {stats.rank_select_scheme}" if stats.rank_select_scheme else "")
    rows: list[list[Any]] = []
    if stats.model_name or stats.created:
        rows.append(["model", stats.model_name or "?"])
        run = [stats.created or "date not recorded", *[f"{k} {v}" for k, v in stats.versions.items()]]
        rows.append(["run", ", ".join(run)])
    rows.append(["scheme", f"{scheme} ({stats.mode or '?'} mode, cost metric {stats.cost_metric or '?'})"])
    if stats.target_comp_ratio is not None:
        rows.append(["target ratio", f"{stats.target_comp_ratio:.3f}"])
    rows.append(["score", stats.score_line().replace(" -> ", " \u2192 ")])
    if stats.finetuned_model_accuracy is not None:
        note = f" ({stats.finetune_note})" if stats.finetune_note else ""
        rows.append(["fine-tuned score", f"{_fmt(stats.finetuned_model_accuracy)}{note}"])
    rows += [
        ["MACs per sample", f"{stats.original_macs:,} \u2192 {stats.compressed_macs:,} "
         f"(ratio {stats.mac_compression_ratio:.3f})"],
        ["parameters", f"{stats.original_params:,} \u2192 {stats.compressed_params:,} "
         f"(ratio {stats.memory_compression_ratio:.3f})"],
        ["compressed layers", str(len(stats.per_layer_stats))],
    ]  # fmt: skip
    if stats.timings:
        total = stats.timings.get("total_seconds", 0.0)
        callback = stats.timings.get("eval_callback_seconds", 0.0)
        rows.append(
            ["time", f"{total:.1f} s total, {callback:.1f} s in the eval callback ({stats.num_eval_calls} calls)"]
        )
    return rows


def _pair(pair: list[int] | None) -> str:
    if not pair:
        return "-"
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]} \u2192 {pair[1]}"


def _has_channels(stats: CompressionStats) -> bool:
    return any(s.in_channels or s.out_channels for s in stats.per_layer_stats)


def _layer_rows(stats: CompressionStats) -> list[list[Any]]:
    channels = _has_channels(stats)
    return [
        [
            s.name,
            s.scheme,
            "x".join(str(d) for d in s.original_shape),
            _rank_text(s.rank),
            f"{s.ratio:.3f}",
            f"{s.macs_before:,}",
            f"{s.macs_after:,}",
            f"{s.mac_ratio:.3f}",
            f"{s.params_before:,}",
            f"{s.params_after:,}",
            f"{s.param_ratio:.3f}",
            *([_pair(s.in_channels), _pair(s.out_channels), s.group or "-"] if channels else []),
        ]
        for s in stats.per_layer_stats
    ]


def _score_table(stats: CompressionStats) -> str:
    ratios = sorted({float(r) for table in stats.eval_scores.values() for r in table})
    header = ["layer", *[f"{r:g}" for r in ratios]]
    rows = []
    for layer, table in stats.eval_scores.items():
        lookup = {float(r): s for r, s in table.items()}
        rows.append([layer, *[_fmt(lookup.get(r)) for r in ratios]])
    return _table(header, rows)


def render_html(stats: Any, title: str = "tfcompress report") -> str:
    """The report of ``stats`` as one self-contained HTML page (plots embedded as base64 PNG ``data:`` URIs).

    Every layer name and note is escaped with :func:`html.escape`; the page loads nothing from
    anywhere else.

    Example:
        >>> from tfcompress.stats import CompressionStats, LayerStats
        >>> stats = CompressionStats(per_layer_stats=[LayerStats("fc<1>", "svd", [64, 10], 4, 0.3, 640, 296, 650, 306)])
        >>> page = render_html(stats)
        >>> "fc&lt;1&gt;" in page and "fc<1>" not in page
        True
    """
    stats = _as_stats(stats)
    _require_matplotlib()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        _table(None, _summary_rows(stats), text_columns=(1,)),
    ]
    if stats.notes:
        parts.append("<ul>" + "".join(f'<li class="note">{_esc(n)}</li>' for n in stats.notes) + "</ul>")

    def image(kind: str, caption: str) -> str:
        figure = plot_stats(stats, kind)
        data = base64.b64encode(figure_png(figure)).decode("ascii")
        alt = _esc(f"{kind} plot")
        return (
            f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>"
        )

    parts.append("<h2>Plots</h2>")
    if stats.eval_scores or stats.tar_index_scores:
        parts.append(
            image(
                "scores",
                "Each curve is the eval score with only that layer compressed, at each candidate ratio; "
                "the star marks the ratio chosen for the layer. "
                "The dashed line is the uncompressed model's score.",
            )
        )
    else:
        parts.append('<p class="note">No eval-score table (manual mode): the score plot is omitted.</p>')
    if stats.per_layer_stats:
        parts.append(
            image(
                "ratios", "Chosen ratio per compressed layer in model order, with the whole model's target and result."
            )
        )
        parts.append(image("costs", "MACs per sample and parameters of each compressed layer, before and after."))
    else:
        parts.append('<p class="note">No layer was compressed.</p>')

    parts.append("<h2>Compressed layers</h2>")
    header = ["layer", "scheme", "kernel", "rank", "chosen ratio", "MACs before", "MACs after", "MAC ratio"]
    header += ["params before", "params after", "param ratio"]
    if _has_channels(stats):
        header += ["input channels", "output channels", "channel group"]
    parts.append(_table(header, _layer_rows(stats), text_columns=(13,)) if stats.per_layer_stats else "<p>none</p>")
    if stats.eval_scores:
        parts.append("<h2>Eval scores (one layer compressed at a time, by candidate ratio)</h2>")
        parts.append(_score_table(stats))
    if stats.tar_index_scores:
        parts.append("<h2>TAR scores by residual index</h2>")
        rows = [[str(i), _fmt(s)] for i, s in sorted(stats.tar_index_scores.items())]
        parts.append(_table(["index", "score"], rows))
    if stats.skipped_layers:
        parts.append("<h2>Layers not compressed</h2>")
        parts.append(_table(["layer", "why"], [[k, v] for k, v in stats.skipped_layers.items()], text_columns=(1,)))
    parts.append('<p class="note">Ratios are compressed cost / original cost. Written by tfcompress.</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def report(stats: Any, path: str | os.PathLike, title: str = "tfcompress report") -> str:
    """Write the HTML report of ``stats`` to ``path`` atomically and return the path.

    The page is self-contained (plots embedded as ``data:`` PNGs, no external links or
    scripts). It is written to a temporary file in the same folder and renamed over
    ``path``, so a reader never sees a half-written report.

    Args:
        stats: a :class:`~tfcompress.CompressionStats`, its ``to_dict()``, or the path of a stats JSON file.
        path: the ``.html`` file to write; its folder must exist.
        title: the page title.

    Example:
        >>> import os, tempfile, tfcompress as tfc
        >>> from tfcompress.stats import CompressionStats, LayerStats
        >>> stats = CompressionStats(per_layer_stats=[LayerStats("fc", "svd", [64, 10], 4, 0.3, 640, 296, 650, 306)])
        >>> path = tfc.report(stats, os.path.join(tempfile.mkdtemp(), "report.html"))
        >>> open(path, encoding="utf-8").read().startswith("<!DOCTYPE html>")
        True
    """
    stats = _as_stats(stats)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write the report to {path!r}: the folder {folder!r} does not exist.")
    write_text_atomic(path, render_html(stats, title=title))
    return path
