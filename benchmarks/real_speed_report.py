"""Reporting of ``real_speed.py``: the speed table and the "which layers lose time" table, from a result dict."""

from __future__ import annotations

from typing import Any

import _common


def markdown(result: dict[str, Any]) -> str:
    batches = result["settings"]["batches"]
    headers = ["model", "scheme", "target", "MAC ratio", "param ratio", ".keras size ratio", "ideal speed-up"]
    headers += [f"TF b{b} speed-up" for b in batches] + [f"TFLite b{b} speed-up" for b in batches]
    headers += ["peak mem. ratio (infer / train)"]
    rows = []
    for case in result["models"]:
        for r in case["results"]:
            row = [
                f"{case['model']} {case['input_size']}px",
                r["scheme"],
                f"{r['target']} (run of {str(r['measured_in'])[:16].replace('T', ' ')})"
                if r.get("measured_in")
                else r["target"],
                r["mac_ratio"],
                r["param_ratio"],
                r["keras_file_size_ratio"],
                f"x{r['ideal_speedup']:.2f}",
            ]
            for runtime in ("tf", "tflite"):
                for b in batches:
                    entry = r.get(f"{runtime}_b{b}")
                    row.append(
                        None if entry is None else f"x{entry['speedup']:.2f} ({entry['fraction_of_ideal_speedup']:.0%})"
                    )
            mem = r.get("peak_memory_ratio")
            row.append(
                None
                if mem is None
                else " / ".join("-" if mem[w] is None else f"{mem[w]:.2f}" for w in ("inference", "train_step"))
            )
            rows.append(row)
    mode = "quick" if result["quick"] else "full"
    notes = [
        "Speed-up = original latency / compressed latency, measured side by side (interleaved runs, median); "
        "in brackets the share of the ideal speed-up 1 / MAC ratio. Ranks are uniform: every eligible Conv2D at "
        "the rank `tfc.rank_for_ratio` gives for the target (Dense layers untouched); channel_pruning: every channel "
        "group keeps one common fraction of its channels (kernel magnitude), bisected to the MAC target.",
    ]
    if any(case["model"] == "ViT" for case in result["models"]):
        notes.append(
            "ViT (`vit.py`: patch 16, a class token, so 197 tokens at 224x224; hidden 256, 4 heads, 4 pre-norm blocks, "
            "feed-forward 1024, random weights): weight_svd rewrites every attention projection (`EinsumDense` -> "
            "`SVDEinsumDense`) and feed-forward `Dense` at the rank for one per-layer ratio, bisected so the model's "
            "MAC ratio is the largest not above the target (the attention products Q.K^T and A.V, about 11% of the "
            "MACs, do not shrink; the patch embedding and the classifier are left alone); channel_pruning removes "
            "feed-forward hidden units (the only channels not tied to the residual stream), one common fraction per "
            "block. Its layer breakdown times each `MultiHeadAttention` whole (the four projections and the two "
            "products)."
        )
    loads = [
        f"{case['model']} {case['run']['machine']['load_average_1min']}"
        for case in result["models"]
        if (case.get("run") or {}).get("machine", {}).get("load_average_1min") is not None
    ]
    if loads:
        notes.append(
            "Load average (1 min) on the 2 cores when each model's run ended: " + ", ".join(loads) + "; the "
            "machine line below gives it at the start of the last run. Other sessions shared the machine."
        )
    if not result["settings"]["memory"]:
        notes.append("Peak memory was not measured in this mode (a subprocess per model; run the full mode).")
    else:
        notes.append(
            "Peak memory: peak RSS (Linux VmHWM, reset after importing TensorFlow) of a fresh process that loads "
            f"the .keras file and runs inference (or one SGD step) at batch {result['settings']['memory_batch']}, "
            f"minus its RSS after the imports ({result['settings']['memory_baseline_mb']:.0f} MB); "
            "compressed / original."
        )
    notes += list(result.get("notes", []))  # what the person who ran it recorded about the run
    if not result.get("complete", True):
        notes.append("Incomplete run: only the models listed were measured before it stopped.")
    return (
        f"## Real speed of uniform decompositions ({mode} mode)\n\n"
        + _common.md_table(headers, rows)
        + "\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n\n"
        + breakdown_markdown(result)
        + _common.md_machine(result["machine"])
    )


def breakdown_markdown(result: dict[str, Any]) -> str:
    """The "which layers lose time" table: each changed layer timed alone, original against compressed."""
    headers = [
        "model",
        "scheme",
        "batch",
        "changed layers",
        "their share of model time",
        "their speed-up (ideal)",
        "slower than original",
        "most time lost (layer: speed-up at MAC ratio)",
    ]
    rows = []
    for case in result["models"]:
        for r in case["results"]:
            breakdown = r.get("layer_breakdown")
            if not breakdown:
                continue
            for key, s in breakdown["summary"].items():
                share = s["share_of_model_time"]
                speed = s["changed_layers_speedup"]
                ideal = s["changed_layers_ideal_speedup"]
                worst = ", ".join(
                    f"{w['layer']}: x{w['speedup']:.2f} at {w['mac_ratio']:.2f}" for w in s["most_time_lost"][:3]
                )
                rows.append(
                    [
                        f"{case['model']} {case['input_size']}px",
                        r["scheme"],
                        key[1:],
                        s["changed_layers"],
                        None if share is None else f"{share:.0%}",
                        None if speed is None else f"x{speed:.2f} (x{ideal:.2f})",
                        len(s["slower_than_original"]),
                        worst or None,
                    ]
                )
    if not rows:
        return ""
    return (
        f"### Which layers lose time (target {', '.join(map(str, result['settings']['layer_targets']))}, "
        "TensorFlow)\n\n"
        + _common.md_table(headers, rows)
        + "\n- Every changed layer (rewritten or pruned) timed alone at its real input shape, original and "
        "compressed side by side, less a call's fixed cost (an identity model on the same input). Share of model time: the changed layers' summed time over the whole original "
        "model's time (the rest, unchanged, bounds the speed-up). Their speed-up: summed original / summed "
        "compressed time, in brackets what it would be if each layer's time shrank like its MACs. Time lost: "
        "compressed time minus original time x MAC ratio.\n\n"
    )
