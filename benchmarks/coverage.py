"""Which keras.applications models tfcompress handles, checked end to end on each family's smallest variant.

For every family (random weights, a small input):

1. honest cost: ``model_cost`` totals, and any layer it cannot count;
2. full-rank rewrite: every layer weight SVD can decompose, at its full rank; the logits must not move
   (max relative difference below 1e-3);
3. greedy weight SVD to 0.5 MACs with a data-free callback (agreement with the original outputs on a few random
   images): the MAC ratio reached, or the outcome when 0.5 cannot be reached;
4. greedy channel pruning to 0.5 MACs, the same way;
5. a ``.keras`` round trip of both compressed models (same outputs after loading).

Writes ``coverage.json`` and ``coverage.md``; ``report_results.py --readme`` turns them into the README's
"Supported models" table. ``--quick`` runs three families (MobileNetV3Small among them) with fewer candidates.

    python benchmarks/coverage.py            # every family, ~an hour on 2 cores
    python benchmarks/coverage.py --quick    # three families, a few minutes
    python benchmarks/coverage.py --families NASNet Xception --append   # re-run two rows, keep the others
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any

import _common

#: each family's smallest constructor and the smallest input it accepts (keras.applications' own limits)
FAMILIES: dict[str, tuple[str, int]] = {
    "ConvNeXt": ("ConvNeXtTiny", 32),
    "DenseNet": ("DenseNet121", 32),
    "EfficientNet": ("EfficientNetB0", 32),
    "EfficientNetV2": ("EfficientNetV2B0", 32),
    "InceptionResNetV2": ("InceptionResNetV2", 75),
    "InceptionV3": ("InceptionV3", 75),
    "MobileNet": ("MobileNet", 32),
    "MobileNetV2": ("MobileNetV2", 32),
    "MobileNetV3": ("MobileNetV3Small", 32),
    "NASNet": ("NASNetMobile", 32),
    "ResNet": ("ResNet50", 32),
    "ResNetV2": ("ResNet50V2", 32),
    "VGG": ("VGG16", 32),
    "Xception": ("Xception", 71),
}
QUICK = ("MobileNetV3", "ResNet", "VGG")
TARGET = 0.5


def _extra(parser: Any) -> None:
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), help="only these families")
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the other families' rows of the existing coverage.json (same mode), each marked with its run's date",
    )


def _build(constructor: str, size: int) -> Any:
    import keras

    kwargs: dict[str, Any] = {"weights": None, "input_shape": (size, size, 3), "classes": 10}
    if "MobileNetV3" in constructor or "EfficientNetV2" in constructor:
        kwargs["include_preprocessing"] = False
    return getattr(keras.applications, constructor)(**kwargs)


def _full_rank_plan(model: Any) -> dict[str, tuple[str, Any]]:
    """Every layer weight SVD can decompose, at its full rank (Dense layers take plain SVD)."""
    from tfcompress.cost import layer_geometry, layer_kind, max_rank
    from tfcompress.graph import walk_layers
    from tfcompress.rewrite import _validate_entry

    plan = {}
    for ref in walk_layers(model, sublayers=True):
        kind = layer_kind(ref.layer)
        if kind is None:
            continue
        scheme = "svd" if kind == "dense" else "weight_svd"
        try:
            rank = max_rank(layer_geometry(ref.layer, input_shape=ref.input_shape), scheme)
        except (TypeError, ValueError):
            continue
        if _validate_entry(ref.layer, scheme, rank) is None:
            plan[ref.path] = (scheme, rank)
    return plan


def _relative_difference(a: Any, b: Any) -> float:
    import numpy as np

    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))


def _greedy(model: Any, scheme: str, x: Any, candidates: int) -> dict[str, Any]:
    """One greedy run to 0.5 MACs; its ratio, eval calls and time, or the outcome when it could not run."""
    import tfcompress as tfc

    score = _common.output_mse_callback(model, x)
    greedy = tfc.GreedySelectionParameters(
        target_comp_ratio=TARGET, num_comp_ratio_candidates=candidates, allow_unreachable=True
    )  # an unreachable 0.5 is a finding to record, with the ratio that was reachable
    if scheme == "channel_pruning":
        params: Any = tfc.ChannelPruningParameters(
            data=x,
            num_reconstruction_samples=200,
            allow_custom_downsample_ops=False,
            mode="auto",
            params=tfc.ChannelPruningParameters.AutoModeParams(greedy),
            channel_selection="magnitude",  # coverage checks the machinery; accuracy.py measures greedy selection
        )
    else:
        params = tfc.WeightSvdParameters("auto", tfc.WeightSvdParameters.AutoModeParams(greedy))
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            compressed, stats = tfc.compress_model(model, score, None, scheme, "mac", params, verbose=0)
        except ValueError as err:
            return {"outcome": "refused", "reason": str(err).splitlines()[0][:300]}
    unreachable = [str(w.message) for w in caught if "most-compressed" in str(w.message)]
    result: dict[str, Any] = {
        "outcome": outcome(stats.mac_compression_ratio),
        "mac_ratio": stats.mac_compression_ratio,
        "memory_ratio": stats.memory_compression_ratio,
        "eval_calls": stats.num_eval_calls,
        "layers_changed": len(stats.per_layer_stats),
        "seconds": time.perf_counter() - start,
    }
    if unreachable:
        result["reason"] = unreachable[0][:300]
    result["round_trip_max_diff"] = _round_trip(compressed, x)
    return result


def outcome(mac_ratio: float, target: float = TARGET) -> str:
    """ "reached" when the MAC ratio is within the selection's tolerance (1e-3) of the target, else "unreachable"
    (the run returned the most-compressed plan it could find)."""
    return "reached" if mac_ratio <= target + 1e-3 else "unreachable"


def _round_trip(model: Any, x: Any) -> float:
    import keras
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
        return float(np.max(np.abs(loaded.predict(x, verbose=0) - model.predict(x, verbose=0))))


def run_family(family: str, quick: bool, seed: int) -> dict[str, Any]:
    """Every check on one family; an exception in a check is recorded, never hidden."""
    import keras

    import tfcompress as tfc

    constructor, size = FAMILIES[family]
    row: dict[str, Any] = {"family": family, "constructor": constructor, "input": size}
    start = time.perf_counter()
    try:
        keras.utils.set_random_seed(seed)
        model = _build(constructor, size)
        x = _common.random_images((size, size, 3), 4 if quick else 8, seed)
        cost = tfc.model_cost(model, warn=False)
        row.update(macs=cost.macs, params=cost.params, uncounted=dict(cost.uncounted))
        plan = _full_rank_plan(model)
        row["decomposable_layers"] = len(plan)
        full = tfc.rewrite_model(model, plan)
        row["full_rank_max_rel_diff"] = _relative_difference(full.predict(x, verbose=0), model.predict(x, verbose=0))
        del full
        candidates = 2 if quick else 4
        row["weight_svd"] = _greedy(model, "weight_svd", x, candidates)
        row["channel_pruning"] = _greedy(model, "channel_pruning", x, candidates)
    except Exception as err:  # recorded in the table: a failure is a finding
        row["error"] = f"{type(err).__name__}: {err}"[:500]
        row["traceback"] = traceback.format_exc(limit=6)
    row["seconds"] = time.perf_counter() - start
    keras.backend.clear_session()
    return row


def _outcome(result: dict[str, Any] | None) -> str:
    if not result:
        return "-"
    if result["outcome"] == "refused":
        return "refused: " + result["reason"][:80]
    text = f"{result['mac_ratio']:.2f} ({result['layers_changed']} layers)"
    if result["outcome"] == "unreachable":
        text += ", 0.5 unreachable"
    if result.get("round_trip_max_diff", 0.0) > 1e-5:
        text += f", round trip off by {result['round_trip_max_diff']:.1e}"
    return text


def table(data: dict[str, Any]) -> str:
    """The coverage table (Markdown), one row per family."""
    headers = [
        "model",
        "input",
        "MACs",
        "uncounted",
        "decomposable",
        "full rank (max rel. diff)",
        "weight SVD @0.5",
        "channel pruning @0.5",
    ]
    rows = []
    for row in data["models"]:
        if "error" in row:
            rows.append([row["constructor"], row["input"], "-", "-", "-", "error: " + row["error"][:90], "-", "-"])
            continue
        rows.append(
            [
                row["constructor"],
                row["input"],
                f"{row['macs'] / 1e6:.1f} M",
                len(row["uncounted"]) or "none",
                row["decomposable_layers"],
                f"{row['full_rank_max_rel_diff']:.1e}",
                _outcome(row.get("weight_svd")),
                _outcome(row.get("channel_pruning")),
            ]
        )
    return _common.md_table(headers, rows)


def _earlier_rows(output_dir: str, quick: bool, families: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows of an earlier ``coverage.json`` of the same mode for the families this run does not re-run
    (``--append``), each with ``measured_in``, the date of the run that measured it."""
    path = os.path.join(output_dir, "coverage.json")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        earlier = json.load(handle)
    if bool(earlier.get("quick")) != quick:
        raise SystemExit(
            f"--append: {path} holds a {'quick' if earlier.get('quick') else 'full'}-mode run; not mixing modes"
        )
    when = earlier.get("machine", {}).get("date")
    return [
        {**row, "measured_in": row.get("measured_in", when)}
        for row in earlier.get("models", [])
        if row.get("family") not in families
    ]


def markdown(data: dict[str, Any]) -> str:
    mode = "quick" if data["quick"] else "full"
    kept = sorted({str(row["measured_in"])[:16] for row in data["models"] if row.get("measured_in")})
    rerun = [row["constructor"] for row in data["models"] if not row.get("measured_in")]
    appended = (
        [
            "",
            f"Rows of {', '.join(rerun)} re-run on {str(data['machine'].get('date', '?'))[:16]}; the others are from "
            f"the run of {', '.join(kept)} (UTC).",
        ]
        if kept
        else []
    )
    lines = [
        "## Coverage of keras.applications",
        "",
        f"{mode.capitalize()} mode. Each family's smallest variant, random weights, ten classes; greedy runs to 0.5 MACs "
        "with a data-free callback (agreement with the original outputs on random images); the ratio reached and the "
        "number of layers changed; every compressed model saved as `.keras` and loaded back.",
        *appended,
        "",
        table(data),
        _common.md_machine(data["machine"]),
    ]
    return "\n".join(lines)


def main() -> int:
    args = _common.parse_args(__doc__.splitlines()[0], _extra)
    sys.path.insert(0, os.path.dirname(_common.HERE))
    _common.quiet_tensorflow()
    families = args.families or (QUICK if args.quick else tuple(FAMILIES))
    rows = []
    for family in families:
        print(f"== {family}", flush=True)
        row = run_family(family, args.quick, args.seed)
        print({k: v for k, v in row.items() if k != "traceback"}, flush=True)
        rows.append(row)
    if args.append:
        rows += _earlier_rows(args.output_dir, bool(args.quick), tuple(families))
        order = list(FAMILIES)
        rows.sort(key=lambda row: order.index(row["family"]) if row["family"] in order else len(order))
    data = {"benchmark": "coverage", "quick": bool(args.quick), "machine": _common.machine_info(), "models": rows}
    json_path, md_path = _common.write_results(args.output_dir, "coverage", data, markdown(data))
    print(f"wrote {json_path} and {md_path}")
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
