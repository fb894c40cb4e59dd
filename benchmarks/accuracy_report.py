"""Reporting of ``accuracy.py``: the goals, the Markdown tables and the plot, from a result dict (or the
``accuracy.json`` an earlier run wrote)."""

from __future__ import annotations

import json
import os
from typing import Any

import _common
from accuracy_methods import CLASSIFIER, METHODS

#: a row "reached" its MAC target if its ratio is at most the target plus this (ratios are measured, not set)
REACHED_TOLERANCE = 0.005


def goals(models: list[dict[str, Any]]) -> dict[str, Any]:
    """Goal 1: some tfcompress method within 1 point of the baseline at 0.5 MACs after fine-tuning, per model.
    Goal 2: greedy weight SVD above uniform weight SVD (same decomposition) before fine-tuning, per target."""
    out: dict[str, Any] = {"within_1_point_at_0.5_after_ft": {}, "greedy_above_uniform_before_ft": {}}
    tfcompress_methods = (
        "spatial_svd_greedy",
        "weight_svd_greedy",
        "channel_pruning",
        "svd_then_prune",
        "auto_greedy",
        "spatial_svd_greedy_data_aware",
        "weight_svd_greedy_data_aware",
        "prune_then_weight_svd",
    )  # the greedy selections (not the uniform and data-free recipes)
    for case in models:
        rows = [r for r in case["results"] if r["status"] == "ok"]
        # a row counts only if it reached the target (channel pruning of the ViT's feed-forward units cannot)
        candidates = [r for r in rows if r["target"] == 0.5 and r["method"] in tfcompress_methods]
        at_half = [r for r in candidates if r["mac_ratio"] <= 0.5 + REACHED_TOLERANCE]
        missed = [r["method"] for r in candidates if r["mac_ratio"] > 0.5 + REACHED_TOLERANCE]
        within = [r["method"] for r in at_half if r["delta_after_ft"] >= -0.01]
        if at_half:
            best = max(at_half, key=lambda r: r["test_accuracy_after_ft"])
            entry = {
                "holds": bool(within),
                "methods_within": within,
                **({"methods_not_reaching_target": missed} if missed else {}),
                "best_method": best["method"],
                "best_delta_after_ft": best["delta_after_ft"],
            }
            tuned = case["baseline"].get("test_accuracy_after_ft")
            if tuned is not None:  # the same comparison against the baseline after the same fine-tuning
                entry["finetuned_baseline_test_accuracy"] = tuned
                entry["best_delta_vs_finetuned_baseline"] = best["test_accuracy_after_ft"] - tuned
                entry["methods_within_finetuned_baseline"] = [
                    r["method"] for r in at_half if r["test_accuracy_after_ft"] - tuned >= -0.01
                ]
            out["within_1_point_at_0.5_after_ft"][case["model"]] = entry
        comparisons = {}
        for target in sorted({r["target"] for r in rows}, reverse=True):
            by = {r["method"]: r for r in rows if r["target"] == target}
            if "weight_svd_greedy" in by and "weight_svd_uniform" in by:
                greedy, uniform = by["weight_svd_greedy"], by["weight_svd_uniform"]
                comparisons[str(target)] = {
                    "greedy": greedy["test_accuracy_before_ft"],
                    "uniform": uniform["test_accuracy_before_ft"],
                    "holds": greedy["test_accuracy_before_ft"] > uniform["test_accuracy_before_ft"],
                }
        out["greedy_above_uniform_before_ft"][case["model"]] = comparisons
    out["goal_within_1_point_holds"] = bool(out["within_1_point_at_0.5_after_ft"]) and all(
        v["holds"] for v in out["within_1_point_at_0.5_after_ft"].values()
    )
    flat = [c["holds"] for v in out["greedy_above_uniform_before_ft"].values() for c in v.values()]
    out["goal_greedy_above_uniform_holds"] = bool(flat) and all(flat)
    return out


# ---------------------------------------------------------------- output


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _delta(value: Any) -> str:
    return "-" if value is None else f"{100 * value:+.2f}"


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    mode = "quick" if result["quick"] else "full"
    lines = [
        f"## Accuracy vs compression on Fashion-MNIST ({mode} mode)\n",
        f"Real data (Debian `dataset-fashion-mnist`): {s['train_images']:,} training images, a validation split of "
        f"{s['validation_images']:,} held out of the training set (the greedy searches score candidates on it), "
        f"test accuracy on {s['test_images']:,} test images (in %). Baselines trained {s['baseline_epochs']} "
        f"epoch(s) (Adam {s['baseline_learning_rate']:g}, cosine decay, batch {s['baseline_batch_size']}). "
        f"Fine-tuning, the same for every method: one pass over {s['finetune_images']:,} training images, "
        f"Adam {s['finetune_learning_rate']:g} decayed to 0 (cosine), batch {s['finetune_batch_size']}, fixed seed. "
        f"The classifier layer `{CLASSIFIER}` is left alone by every method.\n",
        '- greedy spatial SVD / greedy weight SVD: `tfc.compress_model(..., "spatial_svd"|"weight_svd", '
        f'"mac", ...)` in auto mode, greedy selection with {s["num_comp_ratio_candidates"]} candidate ratios '
        "per layer, eval callback = validation accuracy (score table cached across targets).",
        '- channel pruning: `compress_model(..., "channel_pruning", ...)`, greedy, '
        f"{s['calibration_images']} calibration images, {s['num_reconstruction_samples']} reconstruction samples; "
        "spatial SVD then channel pruning: `tfc.svd_then_prune` (when available in this version); channel "
        "pruning then greedy weight SVD: two `compress_model` runs, greedy channel pruning to 0.7 of the MACs "
        "(targets at or above 0.7: half-way to the target), then greedy weight SVD with data-aware factors of the "
        "pruned model to the rest of the target.",
        "- uniform weight SVD: the plain per-layer SVD recipe, every eligible layer (Conv2D/Dense whose rank-1 "
        "weight SVD is cheaper than the layer) at one ratio r in manual mode, r bisected so the whole-model MAC "
        "ratio is the largest not above the target.",
        "- data-free weight SVD: ranks from the singular values only (no data, no evaluation): TAR selection "
        f"(`TarRankSelectionParameters({s['tar_num_rank_indices']}, target)`) with a constant score, so every "
        "layer keeps the rank whose relative reconstruction error `||W - W_r|| / ||W||` is closest to one common "
        "level, the level whose model MAC ratio is closest to the target without exceeding it.",
        '- greedy auto: `compress_model(..., "auto", ...)`, per layer and candidate ratio the best-scoring of '
        "weight SVD, spatial SVD and Tucker-2 (Dense/EinsumDense layers: SVD), greedy selection as above.",
        "- Each model runs the methods listed in its table; a model's own settings (where they differ from the "
        "above) are stated under its heading. On the ViT, weight SVD reaches the attention's query/key/value/output "
        "projections (`EinsumDense` -> `SVDEinsumDense`, by path `blockN_attention/query`) and the feed-forward "
        "`Dense` layers; channel pruning removes feed-forward hidden units (`blockN_mlp1` -> gelu -> `blockN_mlp2`, "
        "the second refitted by least squares), the only channels not tied to the residual stream.\n",
    ]
    for case in result["models"]:
        b = case["baseline"]
        trained = (
            f"trained in {b['train_seconds']:.0f} s, validation accuracy per epoch "
            + ", ".join(f"{100 * v:.2f}" for v in b["val_accuracy_per_epoch"])
            if "train_seconds" in b
            else f"weights cached by an earlier run (`{b.get('cache_file')}`)"
        )
        tuned = (
            f" (after the same fine-tuning: {_pct(b['test_accuracy_after_ft'])}%)"
            if b.get("test_accuracy_after_ft") is not None
            else ""
        )
        lines.append(
            f"### {case['model']}: baseline test accuracy {_pct(b['test_accuracy'])}%{tuned} "
            f"({case['macs'] / 1e6:.2f} M MACs, {case['params']:,} parameters; {trained})\n"
        )
        if case.get("settings_override"):
            lines.append(
                f"Settings of {case['model']} that differ from the above: "
                + ", ".join(
                    f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in case["settings_override"].items()
                )
                + ".\n"
            )
        if case.get("uncounted"):
            lines.append(
                "Not counted in the MACs (tfcompress cannot see into them): "
                + "; ".join(f"`{k}` ({v})" for k, v in case["uncounted"].items())
                + ".\n"
            )
        rows = []
        for r in case["results"]:
            if r["status"] != "ok":
                rows.append((r["label"], r["target"], r["status"], "-", "-", "-", "-"))
                continue
            rows.append(
                (
                    r["label"],
                    r["target"],
                    f"{r['mac_ratio']:.3f}",
                    _pct(r["test_accuracy_before_ft"]),
                    _pct(r["test_accuracy_after_ft"]),
                    _delta(r["delta_before_ft"]),
                    _delta(r["delta_after_ft"]),
                )
            )
        rows.sort(key=lambda row: (list(METHODS.values()).index(row[0]), -row[1]))
        headers = ("method", "target", "MAC ratio", "test acc. before FT", "after FT", "delta before", "delta after")
        lines.append(_common.md_table(headers, rows))
    g = result["goals"]
    lines.append("**Goals.**\n")
    for model, v in g["within_1_point_at_0.5_after_ft"].items():
        lines.append(
            f"- {model}, within 1 point of the baseline at 0.5 MACs after fine-tuning: "
            f"{'yes' if v['holds'] else 'NO'} (best: {METHODS[v['best_method']]}, "
            f"{_delta(v['best_delta_after_ft'])} points; within: "
            f"{', '.join(METHODS[m] for m in v['methods_within']) or 'none'})."
            + (
                " Left out, as they did not reach 0.5 MACs: "
                + ", ".join(METHODS[m] for m in v["methods_not_reaching_target"])
                + "."
                if v.get("methods_not_reaching_target")
                else ""
            )
            + (
                f" Against the baseline after the same fine-tuning ({_pct(v['finetuned_baseline_test_accuracy'])}%): "
                f"best {_delta(v['best_delta_vs_finetuned_baseline'])} points; within: "
                f"{', '.join(METHODS[m] for m in v['methods_within_finetuned_baseline']) or 'none'}."
                if "best_delta_vs_finetuned_baseline" in v
                else ""
            )
        )
    for model, comparisons in g["greedy_above_uniform_before_ft"].items():
        parts = [
            f"{t}: {_pct(c['greedy'])} vs {_pct(c['uniform'])} {'(yes)' if c['holds'] else '(NO)'}"
            for t, c in comparisons.items()
        ]
        lines.append(
            f"- {model}, greedy weight SVD above uniform weight SVD before fine-tuning: " + "; ".join(parts) + "."
        )
    lines.append(
        f"\nGoal 1 (within 1 point at 0.5 after FT, every model): "
        f"{'holds' if g['goal_within_1_point_holds'] else 'does NOT hold'}. "
        f"Goal 2 (greedy above uniform before FT, every model and target): "
        f"{'holds' if g['goal_greedy_above_uniform_holds'] else 'does NOT hold'}.\n"
    )
    if result.get("plot"):
        lines.append(f"Plot: `{result['plot']}` (test accuracy against MAC ratio; open: before, filled: after FT).\n")
    rerun = result.get("rerun_methods")
    if rerun:
        lines.append(
            f"Re-measured on {str(rerun['date'])[:10]} with `--methods` (this tfcompress version)"
            + (f", for {', '.join(rerun['models'])}" if rerun.get("models") else "")
            + ": "
            + ", ".join(METHODS.get(m, m) for m in rerun["methods"])
            + f"; every other row is from the run of {str(rerun['other_rows_from'])[:10]} on the same "
            "baselines and settings.\n"
        )
    again = result.get("rerun_models")
    if again:
        lines.append(
            f"Models run on {str(again['date'])[:10]} with `--models`: {', '.join(again['models'])}; the other "
            f"models' rows are from the run of {str(again['other_models_from'])[:10]} on the same settings.\n"
        )
    for note in result.get("notes", []):
        lines.append(f"Note: {note}\n")
    lines.append(f"Run time {result['seconds']:.0f} s. " + _common.md_machine(result["machine"]))
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str) -> bool:
    """Test accuracy against MAC ratio, one panel per model; open markers before, filled after fine-tuning."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cases = result["models"]
    fig, axes = plt.subplots(1, len(cases), figsize=(6.5 * len(cases), 5.6), squeeze=False)
    palette = plt.get_cmap("tab20").colors  # 20 colours: more methods than the default cycle's 10
    colors = {method: palette[(2 * i) % 20 + (2 * i) // 20] for i, method in enumerate(METHODS)}
    for ax, case in zip(axes[0], cases, strict=True):
        base = case["baseline"]["test_accuracy"]
        ax.axhline(100 * base, color="black", lw=1, ls=":", label="baseline")
        ax.axhspan(100 * (base - 0.01), 100 * base, color="0.9", zorder=0)
        for method, label in METHODS.items():
            rows = sorted(
                (r for r in case["results"] if r["method"] == method and r["status"] == "ok"),
                key=lambda r: r["mac_ratio"],
            )
            if not rows:
                continue
            x = [r["mac_ratio"] for r in rows]
            ax.plot(x, [100 * r["test_accuracy_before_ft"] for r in rows], "o--", color=colors[method], mfc="none")
            ax.plot(x, [100 * r["test_accuracy_after_ft"] for r in rows], "o-", color=colors[method], label=label)
        ax.set_title(f"{case['model']} (baseline {100 * base:.2f}%)")
        ax.set_xlabel("MAC ratio (compressed / original)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        keys = ("test_accuracy_before_ft", "test_accuracy_after_ft")
        low = min([100 * r[k] for r in case["results"] if r["status"] == "ok" for k in keys] + [100 * base - 5])
        ax.set_ylim(max(low - 1, 0), 100 * base + 1)
    legend: dict[str, Any] = {}  # every panel's methods (the ViT runs some the CNNs do not), each once
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=4,
        fontsize=8,
        title="dashed, open markers: before fine-tuning; solid, filled: after; grey band: within 1 point",
        title_fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    temp = f"{path}.{os.getpid()}.tmp"  # atomic: a temp file in the same folder, then one rename
    try:
        fig.savefig(temp, format="png", dpi=110)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    finally:
        plt.close(fig)
        if os.path.exists(temp):
            os.remove(temp)
    return True


def rewrite_outputs(output_dir: str) -> None:
    """Redraw the Markdown table and the plot of an existing ``accuracy.json`` (no training, no compression); the
    goals are recomputed from its rows."""
    with open(os.path.join(output_dir, "accuracy.json"), encoding="utf-8") as handle:
        result = json.load(handle)
    result["goals"] = goals(result["models"])
    png = os.path.join(output_dir, "accuracy.png")
    result["plot"] = os.path.basename(png) if plot(result, png) else None
    paths = _common.write_results(output_dir, "accuracy", result, markdown(result))
    print("wrote", *paths, *([png] if result["plot"] else []))
