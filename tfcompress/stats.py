"""``CompressionStats``: what compress_model did, as a readable table and as JSON."""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, dataclass, field
from typing import Any

from .atomic import write_json_atomic

__all__ = ["LayerStats", "CompressionStats", "run_metadata", "write_json_atomic"]


@dataclass
class LayerStats:
    """One changed layer: what it was, what it became, and what that saved.

    ``ratio`` is the layer's chosen compressed / original cost for a decomposition; for channel pruning it is
    the layer's own cost ratio (MACs, or parameters under the memory metric), and ``rank`` is ``None``.
    ``in_channels`` / ``out_channels`` are ``[before, after]`` when the layer's channels changed, and ``group``
    names the channel group(s) the layer belongs to (channel pruning).
    """

    name: str
    scheme: str
    original_shape: list[int]
    rank: int | list[int] | None
    ratio: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    in_channels: list[int] | None = None
    out_channels: list[int] | None = None
    group: str | None = None

    @property
    def mac_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def param_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0


def _fmt_score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt_channels(pair: list[int] | None) -> str:
    if not pair:
        return "-"
    before, after = pair
    return str(before) if before == after else f"{before}->{after}"


def run_metadata(model: Any, eval_callback: Callable[..., Any] | None = None) -> dict[str, Any]:
    """What a stats record says about its run: model name, UTC time, versions, and what the score is.

    The score's name is the eval callback's function name (``"accuracy (eval callback)"``), or
    ``"eval callback score"`` for a lambda or another callable.

    Example:
        >>> class Model:
        ...     name = "my_cnn"
        >>> def accuracy(model, iterations):
        ...     return 1.0
        >>> info = run_metadata(Model(), accuracy)
        >>> info["model_name"], info["score_name"], sorted(info["versions"])[-1]
        ('my_cnn', 'accuracy (eval callback)', 'tfcompress')
    """
    from ._version import __version__

    versions = {"tfcompress": __version__}
    for module, key in (("keras", "keras"), ("tensorflow", "tensorflow"), ("numpy", "numpy")):
        loaded = sys.modules.get(module)
        version = getattr(loaded, "__version__", None)
        if isinstance(version, str):
            versions[key] = version
    function = getattr(eval_callback, "__wrapped__", eval_callback)
    name = getattr(function, "__name__", "")
    return {
        "model_name": str(getattr(model, "name", "") or ""),
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": dict(sorted(versions.items())),
        "score_name": f"{name} (eval callback)" if name and name.isidentifier() else "eval callback score",
    }


def _fmt_big(value: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def _checked(value: Any, kind: str, where: str) -> Any:
    """``value`` converted to ``kind`` (number, int, str, list, dict, shape, rank, with ``?`` for optional), or a
    ``ValueError`` that names ``where``."""
    if kind.endswith("?"):
        if value is None:
            return None
        kind = kind[:-1]
    if kind in ("number", "int") and not isinstance(value, bool) and isinstance(value, int | float | str):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if kind == "number" and not math.isnan(number):
            return number
        if kind == "int" and math.isfinite(number) and number.is_integer():
            return int(number)
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "list" and isinstance(value, list):
        return value
    if kind == "dict" and isinstance(value, dict):
        return value
    if kind == "shape" and isinstance(value, list):
        return [_checked(v, "int", where) for v in value]
    if kind in ("numbers", "texts") and isinstance(value, dict):
        inner = "number" if kind == "numbers" else "str"
        return {str(k): _checked(v, inner, f"{where}[{k!r}]") for k, v in value.items()}
    if kind == "notes" and isinstance(value, list):
        return [_checked(v, "str", f"{where}[{i}]") for i, v in enumerate(value)]
    if kind == "rank" and isinstance(value, list):
        return [_checked(v, "int", where) for v in value]
    if kind == "rank":
        return _checked(value, "int", where)
    names = {
        "number": "a number",
        "int": "an integer",
        "str": "a string",
        "list": "a list",
        "dict": "an object",
        "shape": "a list of integers",
        "numbers": "an object of numbers",
        "texts": "an object of strings",
        "notes": "a list of strings",
        "rank": "an integer or a list of integers",
    }
    raise ValueError(f"{where}: expected {names[kind]}, got {value!r}")


_FIELD_KINDS = {
    "baseline_model_accuracy": "number?",
    "compressed_model_accuracy": "number?",
    "mac_compression_ratio": "number",
    "memory_compression_ratio": "number",
    "per_layer_stats": "list",
    "eval_scores": "dict",
    "compress_scheme": "str",
    "cost_metric": "str",
    "mode": "str",
    "rank_select_scheme": "str?",
    "target_comp_ratio": "number?",
    "selected_comp_ratio": "number?",
    "original_macs": "int",
    "compressed_macs": "int",
    "original_params": "int",
    "compressed_params": "int",
    "timings": "numbers",
    "num_eval_calls": "int",
    "tar_index_scores": "dict",
    "plan_scores": "numbers",
    "skipped_layers": "texts",
    "uncounted_layers": "texts",
    "notes": "notes",
    "score_name": "str",
    "finetuned_model_accuracy": "number?",
    "finetune_note": "str",
    "chosen_ratios": "dict",
    "max_score_drop": "number?",
    "whole_model_evaluations": "int",
    "model_name": "str",
    "created": "str",
    "versions": "texts",
}
_LAYER_KINDS = {
    "name": "str",
    "scheme": "str",
    "original_shape": "shape",
    "rank": "rank?",
    "ratio": "number",
    "macs_before": "int",
    "macs_after": "int",
    "params_before": "int",
    "params_after": "int",
    "in_channels": "shape?",
    "out_channels": "shape?",
    "group": "str?",
}


def _required(field_: Any) -> bool:
    return field_.default is MISSING and field_.default_factory is MISSING


@dataclass
class CompressionStats:
    """The result of :func:`tfcompress.compress_model`.

    Ratios are compressed cost / original cost of the whole model. ``eval_scores``
    is the greedy table ``{layer: {ratio: score}}``; ``timings`` holds the seconds
    spent in the eval callback versus the toolkit's own overhead (``total_seconds``,
    ``eval_callback_seconds``, ``overhead_seconds`` = total minus callback minus the
    trainer's ``trainer_seconds``; of the overhead: ``svd_seconds`` (the time spent waiting for SVDs: they are
    computed on background threads while the working copy is cloned, ``svd_compute_seconds`` summed over the
    threads), ``working_copy_seconds``, ``final_rewrite_seconds``).

    Example:
        >>> s = CompressionStats(baseline_model_accuracy=0.9, compressed_model_accuracy=0.88,
        ...                      mac_compression_ratio=0.5, memory_compression_ratio=0.6)
        >>> s.to_dict()["mac_compression_ratio"]
        0.5
        >>> CompressionStats.from_dict(s.to_dict()) == s
        True
    """

    baseline_model_accuracy: float | None = None
    compressed_model_accuracy: float | None = None
    mac_compression_ratio: float = 1.0
    memory_compression_ratio: float = 1.0
    per_layer_stats: list[LayerStats] = field(default_factory=list)
    eval_scores: dict[str, dict[float, float]] = field(default_factory=dict)
    compress_scheme: str = ""
    cost_metric: str = ""
    mode: str = ""
    rank_select_scheme: str | None = None
    target_comp_ratio: float | None = None
    selected_comp_ratio: float | None = None
    original_macs: int = 0
    compressed_macs: int = 0
    original_params: int = 0
    compressed_params: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    num_eval_calls: int = 0
    tar_index_scores: dict[int, float] = field(default_factory=dict)
    plan_scores: dict[str, float] = field(default_factory=dict)
    skipped_layers: dict[str, str] = field(default_factory=dict)
    #: ``{layer: reason}`` of layers whose MACs are not known (MAC ratios leave them out; see ``allow_uncounted_macs``)
    uncounted_layers: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: what the score is (the eval callback's name, or e.g. "output fidelity (data-free)"); "" = not recorded
    score_name: str = ""
    #: the score after fine-tuning that followed the compression (the demo's), when there was one
    finetuned_model_accuracy: float | None = None
    finetune_note: str = ""
    #: the selection's choice per row of ``eval_scores`` (a layer, or a channel group), when it differs from rows
    chosen_ratios: dict[str, float] = field(default_factory=dict)
    #: the accuracy target (``GreedySelectionParameters.max_score_drop``), when one was given
    max_score_drop: float | None = None
    #: whole-model evaluations of candidate plans made by the accuracy-target search (also in ``plan_scores``)
    whole_model_evaluations: int = 0
    model_name: str = ""
    #: when the run finished, "YYYY-MM-DD HH:MM UTC"
    created: str = ""
    #: versions of tfcompress, Keras, TensorFlow and numpy that made these stats
    versions: dict[str, str] = field(default_factory=dict)

    def put_in_model_order(self, paths: Iterable[str]) -> None:
        """Order ``per_layer_stats`` and ``skipped_layers`` as ``paths`` (the model's layers); others keep their place
        after them.

        Example:
            >>> s = CompressionStats(skipped_layers={"fc": "not eligible", "conv1": "kept at full size"})
            >>> s.put_in_model_order(["conv1", "conv2", "fc"])
            >>> list(s.skipped_layers)
            ['conv1', 'fc']
        """
        position = {path: i for i, path in enumerate(paths)}
        last = len(position)

        def key(item: tuple[int, str]) -> tuple[int, int]:
            index, name = item
            return (position.get(name, last), index)

        order = sorted(enumerate(s.name for s in self.per_layer_stats), key=key)
        self.per_layer_stats = [self.per_layer_stats[i] for i, _ in order]
        names = sorted(enumerate(self.skipped_layers), key=key)
        self.skipped_layers = {name: self.skipped_layers[name] for _, name in names}

    # ---------------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (ratio keys of the score table become strings)."""
        data = asdict(self)
        data["eval_scores"] = {
            layer: {format(float(r), ".6g"): float(s) for r, s in sorted(table.items())}
            for layer, table in self.eval_scores.items()
        }
        data["tar_index_scores"] = {str(i): float(s) for i, s in sorted(self.tar_index_scores.items())}
        for row in data["per_layer_stats"]:
            row["original_shape"] = list(row["original_shape"])
            if isinstance(row["rank"], tuple):
                row["rank"] = list(row["rank"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionStats:
        """Inverse of :meth:`to_dict`. A malformed field raises ``ValueError`` naming it.

        Example:
            >>> CompressionStats.from_dict({"per_layer_stats": [{"name": "fc", "rank": "x"}]})
            Traceback (most recent call last):
            ...
            ValueError: field 'per_layer_stats[0]' (layer 'fc'): missing scheme, original_shape, ratio, macs_before, macs_after, params_before, params_after
        """
        if not isinstance(data, dict):
            raise ValueError(f"expected an object of stats fields, got {type(data).__name__}")
        data = dict(data)
        for name, kind in _FIELD_KINDS.items():
            if name in data:
                data[name] = _checked(data[name], kind, f"field {name!r}")
        rows = []
        for i, row in enumerate(data.get("per_layer_stats", [])):
            where = f"field 'per_layer_stats[{i}]'"
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected an object, got {row!r}")
            where += f" (layer {row.get('name', '?')!r})"
            missing = [k for k, f in LayerStats.__dataclass_fields__.items() if k not in row and _required(f)]
            if missing:
                raise ValueError(f"{where}: missing {', '.join(missing)}")
            checked = {k: _checked(row[k], kind, f"{where}.{k}") for k, kind in _LAYER_KINDS.items() if k in row}
            rows.append(LayerStats(**checked))
        data["per_layer_stats"] = rows
        data["eval_scores"] = {
            layer: {
                _checked(r, "number", f"field 'eval_scores[{layer!r}]' ratio"): _checked(
                    s, "number", f"field 'eval_scores[{layer!r}][{r!r}]'"
                )
                for r, s in _checked(table, "dict", f"field 'eval_scores[{layer!r}]'").items()
            }
            for layer, table in data.get("eval_scores", {}).items()
        }
        data["tar_index_scores"] = {
            _checked(i, "int", "field 'tar_index_scores' key"): _checked(
                s, "number", f"field 'tar_index_scores[{i!r}]'"
            )
            for i, s in data.get("tar_index_scores", {}).items()
        }
        data["chosen_ratios"] = {
            str(k): _checked(v, "number", f"field 'chosen_ratios[{k!r}]'")
            for k, v in data.get("chosen_ratios", {}).items()
        }
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` to ``path`` as JSON, atomically."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> CompressionStats:
        """Read stats written by :meth:`to_json`."""
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{os.fspath(path)} is not a valid stats JSON file: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{os.fspath(path)} is not a stats JSON file (expected an object at top level).")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{os.fspath(path)} is not a valid stats JSON file: {err}") from None

    # ---------------------------------------------------------------- plots

    def plot(self, kind: str = "scores", ax: Any = None) -> Any:
        """Plot these stats with matplotlib and return the ``Figure`` (see :mod:`tfcompress.report`).

        Args:
            kind: ``"scores"`` (eval score against ratio per layer, chosen ratio marked),
                ``"ratios"`` (chosen ratio per layer in model order), ``"macs"``, ``"params"``
                (before/after per layer) or ``"costs"`` (both, side by side; no ``ax``).
            ax: a matplotlib ``Axes`` to draw on; by default a new ``Figure`` (Agg canvas, no pyplot).

        Needs matplotlib (``pip install matplotlib``, or ``pip install -e ".[report]"`` in the checkout).

        Example:
            >>> stats = CompressionStats(per_layer_stats=[LayerStats("fc", "svd", [64, 10], 4, 0.3, 640, 296, 650, 306)])
            >>> figure = stats.plot("ratios")
            >>> type(figure).__name__
            'Figure'
        """
        from .report import plot_stats

        return plot_stats(self, kind=kind, ax=ax)

    # ---------------------------------------------------------------- text

    def __str__(self) -> str:
        lines = ["tfcompress: compression stats"]
        if self.model_name or self.created:
            lines.append(f"  model            {self.run_line()}")
        scheme = self.compress_scheme + (f" / {self.rank_select_scheme}" if self.rank_select_scheme else "")
        lines.append(f"  scheme           {scheme} ({self.mode} mode, cost metric {self.cost_metric})")
        if self.target_comp_ratio is not None:
            lines.append(f"  target ratio     {self.target_comp_ratio:.3f}")
        lines.append(f"  score            {self.score_line()}")
        if self.finetuned_model_accuracy is not None:
            note = f" ({self.finetune_note})" if self.finetune_note else ""
            lines.append(f"  fine-tuned       {_fmt_score(self.finetuned_model_accuracy)}{note}")
        lines.append(
            f"  MACs             {_fmt_big(self.original_macs)} -> {_fmt_big(self.compressed_macs)} "
            f"(ratio {self.mac_compression_ratio:.3f})"
        )
        lines.append(
            f"  params           {_fmt_big(self.original_params)} -> {_fmt_big(self.compressed_params)} "
            f"(ratio {self.memory_compression_ratio:.3f})"
        )
        if self.timings:
            total = self.timings.get("total_seconds", 0.0)
            callback = self.timings.get("eval_callback_seconds", 0.0)
            overhead = self.timings.get("overhead_seconds", 0.0)
            share = 100.0 * overhead / total if total else 0.0
            svd = self.timings.get("svd_seconds", 0.0)
            lines.append(
                f"  time             {total:.1f} s total: {callback:.1f} s in eval callback ({self.num_eval_calls} calls), "
                f"{overhead:.1f} s toolkit overhead ({share:.1f}%{f', {svd:.1f} s of it SVD' if svd else ''})"
            )
        if self.per_layer_stats:
            channels = any(s.in_channels or s.out_channels for s in self.per_layer_stats)
            header: tuple[str, ...] = ("layer", "scheme", "kernel", "rank", "ratio")
            header += ("MACs before", "MACs after", "params before", "params after")
            if channels:
                header += ("in ch", "out ch", "group")
            rows = []
            for s in self.per_layer_stats:
                row: tuple[str, ...] = (
                    s.name,
                    s.scheme,
                    "x".join(str(d) for d in s.original_shape),
                    "x".join(str(r) for r in s.rank) if isinstance(s.rank, list | tuple) else str(s.rank or "-"),
                    f"{s.ratio:.2f}",
                    _fmt_big(s.macs_before),
                    _fmt_big(s.macs_after),
                    _fmt_big(s.params_before),
                    _fmt_big(s.params_after),
                )
                if channels:
                    row += (_fmt_channels(s.in_channels), _fmt_channels(s.out_channels), s.group or "-")
                rows.append(row)
            widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
            lines.append("")
            lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
            lines.append("  " + "  ".join("-" * w for w in widths))
            for cells in rows:
                lines.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if self.skipped_layers:
            lines.append("")
            lines.append("  not compressed:")
            for name, why in self.skipped_layers.items():
                lines.append(f"    {name}: {why}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)

    def score_line(self) -> str:
        """``"<what the score is>: baseline 0.9359 -> compressed 0.9410"``."""
        name = self.score_name or "eval score"
        trained = " (after the trainer's fine-tuning)" if self.timings.get("trainer_seconds") else ""
        return (
            f"{name}: baseline {_fmt_score(self.baseline_model_accuracy)} -> "
            f"compressed {_fmt_score(self.compressed_model_accuracy)}{trained}"
        )

    def run_line(self) -> str:
        """``"digits_cnn, 2026-12-05 12:50 UTC, tfcompress 0.1.0, keras 3.15.1, ..."`` (what is recorded)."""
        parts = [self.model_name or "?"]
        if self.created:
            parts.append(self.created)
        parts += [f"{name} {version}" for name, version in self.versions.items()]
        return ", ".join(parts)

    def __repr__(self) -> str:
        return (
            f"CompressionStats(mac_compression_ratio={self.mac_compression_ratio:.4f}, "
            f"memory_compression_ratio={self.memory_compression_ratio:.4f}, "
            f"baseline_model_accuracy={self.baseline_model_accuracy}, compressed_model_accuracy={self.compressed_model_accuracy}, "
            f"layers={len(self.per_layer_stats)})"
        )
