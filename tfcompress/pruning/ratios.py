"""Channel pruning's candidates: which channel groups are pruned at which ratios (manual mode: the user's; auto
mode: every group not touched by ``modules_to_ignore``), and the channels each candidate keeps. ``run`` is the
driver's run record."""

from __future__ import annotations

from typing import Any

from ..graph import no_candidates_detail, resolve_layers, walk_layers
from .consumers import smallest_keep
from .sampling import keep_count


def manual_ratios(run: Any, reasons: dict[str, str]) -> dict[str, list[float]]:
    """``{unit: [ratio]}`` from ManualModeParams; each named layer's units (a concat reader has several)."""
    consumer_units: dict[str, list[str]] = {}
    for u in run.units_list:
        for slot in u.consumers:
            consumer_units.setdefault(slot.layer, []).append(u.name)
    top = {r.path for r in walk_layers(run.model, sublayers=True)}
    ffn_of = {key: u.name for u in run.ffn_units for key in (u.name, *u.layers)}  # a unit by its name or a layer
    ratios_of: dict[str, list[float]] = {}
    problems = []
    for layer, ratio in run.parameters.params.list_of_module_comp_ratio_pairs:
        name = getattr(layer, "name", layer)
        if isinstance(name, str) and name in ffn_of:
            if ffn_of[name] in ratios_of:
                problems.append(f"'{name}': its FFN unit '{ffn_of[name]}' is listed twice")
            ratios_of[ffn_of[name]] = [ratio]
        elif not isinstance(name, str) or name not in top:
            problems.append(f"'{name}': no such layer in '{run.model.name}'")
        elif name in consumer_units:
            for unit_name in consumer_units[name]:
                if unit_name in ratios_of:
                    problems.append(f"'{name}': its channel group '{unit_name}' is listed twice")
                ratios_of[unit_name] = [ratio]
        elif name in reasons:
            problems.append(f"'{name}': {reasons[name]}")
        else:
            problems.append(
                f"'{name}': not a Conv2D/Dense/SeparableConv2D layer whose input channels can be pruned (name the "
                "layer whose INPUT channels should shrink)"
            )
    if problems:
        raise ValueError("ManualModeParams cannot be applied: " + "; ".join(problems) + ".")
    return ratios_of


def auto_ratios(run: Any) -> dict[str, list[float]]:
    """``{unit: candidate ratios}`` for every unit not touched by ``modules_to_ignore``."""
    auto = run.parameters.params
    run.stats.rank_select_scheme = auto.rank_select_scheme.value
    run.stats.target_comp_ratio = auto.target_comp_ratio
    ffn_names = {u.name for u in run.ffn_units}
    names = [m for m in auto.modules_to_ignore if getattr(m, "name", m) not in ffn_names]
    refs = resolve_layers(walk_layers(run.model, sublayers=True), names, what="modules_to_ignore")
    ignored = {ref.path for ref in refs.values()} | (set(auto.modules_to_ignore) & ffn_names)
    ratios_of: dict[str, list[float]] = {}
    for u in run.units_list:
        members = {s.layer for s in u.consumers}
        if members & ignored:
            for layer in members:
                run.stats.skipped_layers[layer] = (
                    "in modules_to_ignore"
                    if layer in ignored
                    else f"its channel group '{u.name}' has a layer in modules_to_ignore"
                )
        elif u.channels < 2:
            run.stats.skipped_layers.setdefault(u.name, "a single channel cannot be pruned")
        else:
            ratios_of[u.name] = list(auto.select_params.candidates)
    for f in run.ffn_units:  # FFN units inside custom layers: ignored by their name, block or any of their layers
        hit = {f.name, f.block, *f.layers} & ignored
        if hit:
            for layer in f.layers:
                run.stats.skipped_layers[layer] = f"its FFN unit '{f.name}' is ignored ({', '.join(sorted(hit))})"
        else:
            ratios_of[f.name] = list(auto.select_params.candidates)
    if not ratios_of:
        raise ValueError(
            f"compress_model: no layer of '{run.model.name}' can be channel-pruned: "
            + no_candidates_detail(run.model, run.stats.skipped_layers)
        )
    return ratios_of


def candidate_keeps(run: Any, ratios_of: dict[str, list[float]], manual: bool) -> dict[str, dict[float, int]]:
    """``{unit: {ratio: channels kept}}``: rounded to the multiplicity; candidates that keep everything, or fewer
    channels than a decomposed layer's rank allows, are dropped (manual mode: raised to the smallest allowed)."""
    keeps: dict[str, dict[float, int]] = {}
    for name, ratios in ratios_of.items():
        n = run.units[name].channels
        smallest = 1 if run.is_ffn(name) else smallest_keep(run.units[name], run.model)
        keeps[name] = {}
        for ratio in ratios:
            k = keep_count(ratio, n, run.parameters.multiplicity)
            if k < smallest:
                if not manual:
                    continue
                run.stats.notes.append(
                    f"channel group '{name}' keeps {smallest} channels, not {k}: fewer would push the rank of a "
                    "decomposed layer in it past its bound"
                )
                k = smallest
            if manual or k < n:
                keeps[name][ratio] = k
    return keeps
