"""``tfcompress inspect``: per-layer costs, maximum ranks and eligibility per scheme of a model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .stats import _fmt_big

__all__ = ["SCHEMES", "inspect_model", "inspect_text"]

#: the decomposition schemes the command line offers (channel_pruning is separate)
SCHEMES = ("weight_svd", "spatial_svd", "tucker")
#: the layer classes that can be decomposed: they get a reason per scheme in the text when not eligible
_DECOMPOSABLE = ("Dense", "EinsumDense", "Conv1D", "Conv2D", "SeparableConv2D", "Conv2DTranspose")
_DECOMPOSABLE_TEXT = "Dense, EinsumDense, Conv1D, Conv2D, SeparableConv2D or Conv2DTranspose"
#: layers that hold most of a model's weights without being decomposable yet: their reason is printed too
_EXPLAINED = (*_DECOMPOSABLE, "MultiHeadAttention", "ReversibleEmbedding", "RotaryEmbedding")


def inspect_model(model: Any, metric: str = "mac") -> dict[str, Any]:
    """Per-layer costs, max ranks and eligibility per scheme of ``model``, JSON-ready.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(16, 3, name="c"),
        ...                           keras.layers.Conv2D(8, 1, name="p")])
        >>> info = inspect_model(model)
        >>> info["layers"][0]["schemes"]["spatial_svd"]
        {'eligible': True, 'manual_only': False, 'max_rank': 9, 'reason': None}
        >>> info["layers"][1]["schemes"]["spatial_svd"]["reason"]
        '1x1 convolution: spatial_svd needs a kernel larger than 1 in at least one direction'
    """
    from .cost import decomposed_cost, layer_geometry, layer_kind, max_rank, model_cost, original_cost
    from .enums import CompressionScheme
    from .graph import walk_layers
    from .pipeline.candidates import ineligibility, inner_problem

    cost = model_cost(model, warn=False)
    fresh_models: dict[int, Any] = {}  # models re-created whole to check their custom layers' sublayers
    rows = []
    eligible_totals = {s: {"layers": 0, "macs": 0, "params": 0} for s in SCHEMES}
    for ref in walk_layers(model, sublayers=True):
        if ref.owner is None:
            row_cost = cost.layers[ref.path]
        else:  # inside a custom layer: counted in its owner's row too
            row_cost = _inner_cost(ref)
        if not row_cost.macs and not row_cost.params:
            continue
        layer = ref.layer
        schemes: dict[str, dict[str, Any]] = {}
        decomposable = layer_kind(layer) is not None
        for scheme_name in SCHEMES:
            entry: dict[str, Any] = {"eligible": False, "manual_only": False, "max_rank": None, "reason": None}
            scheme = CompressionScheme(scheme_name)
            if not decomposable:
                entry["reason"] = f"{type(layer).__name__} is not a {_DECOMPOSABLE_TEXT} layer"
                schemes[scheme_name] = entry
                continue
            inner = inner_problem(ref, model, fresh_models)
            why = inner or ineligibility(layer, scheme, manual=False)
            manual_why = (inner or ineligibility(layer, scheme, manual=True)) if why else None
            if why and manual_why:
                entry["reason"] = why
            else:
                per_layer = "svd" if layer_kind(layer) in ("dense", "einsum_dense") else scheme_name
                geometry = layer_geometry(layer, input_shape=ref.input_shape)
                smallest = decomposed_cost(geometry, per_layer, (1, 1) if per_layer == "tucker" else 1)
                if smallest.metric(metric) >= original_cost(geometry).metric(metric):
                    entry["reason"] = f"even rank 1 costs as many {'MACs' if metric == 'mac' else 'parameters'} "
                    entry["reason"] += "as the original layer"
                else:
                    bound = max_rank(geometry, per_layer)
                    entry["max_rank"] = list(bound) if isinstance(bound, tuple) else int(bound)
                    entry["eligible"] = True
                    entry["manual_only"] = bool(why)
                    if why:
                        entry["reason"] = why
                    else:
                        totals = eligible_totals[scheme_name]
                        totals["layers"] += 1
                        totals["macs"] += row_cost.macs
                        totals["params"] += row_cost.params
            schemes[scheme_name] = entry
        rows.append(
            {
                "name": ref.path,
                "class": type(layer).__name__,
                "macs": int(row_cost.macs),
                "params": int(row_cost.params),
                "calls": int(ref.calls),
                "inside": None if ref.owner is None else ref.owner.name,
                "schemes": schemes,
            }
        )
    return {
        "model": model.name,
        "macs": int(cost.macs),
        "params": int(cost.params),
        "layers": rows,
        "eligible_totals": eligible_totals,
        "uncounted": dict(cost.uncounted),
        "channel_pruning": _pruning_info(model),
    }


def _inner_cost(ref: Any) -> Any:
    """The cost row of a layer inside a custom layer, from the input shape its owner's traced call gave it."""
    import keras

    from .cost import LayerCost, _geometry_macs
    from .layer_macs import Uncounted, layer_macs

    layer, shape = ref.layer, ref.input_shape
    try:
        if shape is None:
            raise Uncounted("no input shape")
        macs = layer_macs(layer, [keras.KerasTensor(shape)], {}, [], special=_geometry_macs)
    except Uncounted:
        macs = 0
    params = int(layer.count_params()) if layer.built else 0
    return LayerCost(ref.path, type(layer).__name__, macs * ref.calls, params, ref.calls)


def _pruning_info(model: Any) -> dict[str, Any]:
    """Which layers channel pruning can prune (consumers of a channel group) and why the others cannot, by their
    paths in ``model`` (channel pruning inlines nested models first, as compress_model does)."""
    from .pruning import prune_units
    from .pruning.inline import inline_nested_models

    try:
        inlined = inline_nested_models(model)
        flat = model if inlined is None else inlined.model
        paths = {} if inlined is None else inlined.paths
        units, reasons = prune_units(flat)
    except ValueError as err:
        return {"prunable": [], "groups": 0, "reasons": {}, "error": str(err)}
    prunable = sorted({paths.get(slot.layer, slot.layer) for unit in units for slot in unit.consumers})
    reasons = {paths.get(name, name): why for name, why in reasons.items()}
    ffn = _ffn_info(model)
    for consumer, producers in ffn.items():
        for path in (*producers, consumer):  # FFN-like layers inside custom layers: pruned as FFN units instead
            reasons.pop(path, None)
    return {"prunable": prunable, "groups": len(units), "reasons": reasons, "ffn": ffn}


def _ffn_info(model: Any) -> dict[str, list[str]]:
    """FFN-like pairs inside custom layers (consumer path -> producer paths), found by shape; compress_model
    checks each on the data before pruning it as a unit of hidden units."""
    from .pruning.ffn import ffn_candidates

    try:
        return ffn_candidates(model)
    except (ValueError, TypeError):  # a model whose custom layers cannot be traced: nothing to list
        return {}


def inspect_text(info: dict[str, Any], path: str) -> str:
    def cell(entry: dict[str, Any]) -> str:
        if not entry["eligible"]:
            return "-"
        rank = entry["max_rank"]
        text = "x".join(str(r) for r in rank) if isinstance(rank, list) else str(rank)
        return text + (" (manual)" if entry["manual_only"] else "")

    header = ("layer", "type", "MACs", "params", *SCHEMES)
    rows = [
        (
            row["name"],
            row["class"],
            _fmt_big(row["macs"]),
            _fmt_big(row["params"]),
            *[cell(row["schemes"][s]) for s in SCHEMES],
        )
        for row in info["layers"]
    ]
    rows.append(("total", "", _fmt_big(info["macs"]), _fmt_big(info["params"]), "", "", ""))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    numeric = {2, 3}

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    out = [f"model '{info['model']}' ({path}): {info['macs']:,} MACs per sample, {info['params']:,} parameters", ""]
    out.append(line(header))
    out.append(line(["-" * w for w in widths]))
    out.extend(line(r) for r in rows[:-1])
    out.append(line(["-" * w for w in widths]))
    out.append(line(rows[-1]))
    out.append("")
    out.append("scheme columns: the maximum rank where the layer can be compressed with the scheme, '-' where it")
    out.append("cannot; '(manual)': only when listed with --manual. 'outer/inner' is a layer inside the custom layer")
    out.append("'outer' (its MACs and parameters are also in the row of 'outer').")
    uncounted = info.get("uncounted") or {}
    if uncounted:
        out.append("")
        out.append(
            f"MACs not counted ({len(uncounted)} layer(s); the total above leaves them out, and compress refuses"
        )
        out.append("a MAC target unless --allow-uncounted):")
        out.extend(f"  {name}: {reason}" for name, reason in uncounted.items())
    out.append("")
    for scheme in SCHEMES:
        totals = info["eligible_totals"][scheme]
        share = 100.0 * totals["macs"] / info["macs"] if info["macs"] else 0.0
        out.append(
            f"{scheme:<12} {totals['layers']} eligible layer(s) in auto mode, {_fmt_big(totals['macs'])} MACs "
            f"({share:.1f}% of the model), {_fmt_big(totals['params'])} parameters"
        )
    pruning = info.get("channel_pruning")
    if pruning:
        out.append(
            f"{'channel_pruning':<12} {len(pruning['prunable'])} prunable layer(s) in {pruning['groups']} channel "
            f"group(s); {len(pruning['reasons'])} layer(s) cannot lose input channels"
            + (f" ({pruning['error']})" if pruning.get("error") else "")
        )
        for consumer, producers in pruning.get("ffn", {}).items():
            out.append(
                f"{'':<12} FFN unit candidate: {', '.join(producers)} -> {consumer} (hidden units pruned together; "
                "checked on ChannelPruningParameters.data by compress_model)"
            )
    reasons: dict[tuple[str, str], list[str]] = {}
    for row in info["layers"]:
        if row["class"] not in _EXPLAINED and all(row["schemes"][s]["max_rank"] is None for s in SCHEMES):
            continue  # layers that are never decomposable need no explanation per scheme
        for scheme in SCHEMES:
            entry = row["schemes"][scheme]
            if entry["reason"] and not entry["eligible"]:
                reasons.setdefault((scheme, entry["reason"]), []).append(row["name"])
    for name, reason in (pruning or {}).get("reasons", {}).items():
        reasons.setdefault(("channel_pruning", reason), []).append(name)
    if reasons:
        out.append("")
        out.append("not eligible:")
        for (scheme, reason), names in reasons.items():
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            out.append(f"  {scheme}: {shown}: {reason}")
    return "\n".join(out)
