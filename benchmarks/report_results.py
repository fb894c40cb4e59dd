"""Gather the benchmark results into one Markdown "Results" section, and regenerate the README's from the JSON.

    python benchmarks/report_results.py                         # benchmarks/results/*.json -> results/RESULTS.md
    python benchmarks/report_results.py --readme                # also rewrite README.md's "Results" section
    python benchmarks/report_results.py --output-dir DIR -o results.md --readme path/to/README.md

Each ``NAME.json`` written by a benchmark script has a ``NAME.md`` next to it; ``RESULTS.md`` is those tables in a
fixed order. ``--readme`` writes a shorter summary computed from the JSON files themselves (headline numbers,
the goals, the machine, versions and dates) between the markers ``<!-- results:start -->`` and
``<!-- results:end -->`` of the README; when the README has no markers yet, the section is appended at its end.
Files are written atomically.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import _common

from tfcompress.atomic import write_text_atomic

ORDER = ("accuracy", "selection_cost", "real_speed", "latency_plans", "memory")
START, END = "<!-- results:start -->", "<!-- results:end -->"
DEFAULT_README = os.path.join(os.path.dirname(_common.HERE), "README.md")


def load_results(folder: str) -> list[tuple[str, dict[str, Any]]]:
    """``(file stem, data)`` of every benchmark record in ``folder``, in ORDER then by name."""
    found = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("benchmark"), str) and isinstance(data.get("machine"), dict):
            found.append((os.path.splitext(os.path.basename(path))[0], data))

    def key(item: tuple[str, dict[str, Any]]) -> tuple[int, str]:
        name = item[1]["benchmark"]
        return (ORDER.index(name) if name in ORDER else len(ORDER), item[0])

    return sorted(found, key=key)


def results_markdown(folder: str, records: list[tuple[str, dict[str, Any]]]) -> str:
    """The benchmarks' own Markdown files, headings one level down, under one "Results" heading."""
    sections = []
    for stem, _ in records:
        markdown = os.path.join(folder, f"{stem}.md")
        if os.path.exists(markdown):
            with open(markdown, encoding="utf-8") as handle:
                sections.append(
                    handle.read().replace("\n### ", "\n#### ").replace("\n## ", "\n### ").replace("## ", "### ", 1)
                )
    return "## Results\n\n" + "\n".join(sections)


# ---------------------------------------------------------------- README summary, one function per benchmark


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _x(value: Any) -> str:
    return "-" if value is None else f"x{value:.2f}"


def _mode(data: dict[str, Any]) -> str:
    date = str(data["machine"].get("date", "?"))[:10]
    return f"{'quick' if data.get('quick') else 'full'} mode, {date}"


def summary_accuracy(stem: str, data: dict[str, Any], link: str) -> str:
    methods = data.get("methods", {})
    targets = sorted({r["target"] for case in data["models"] for r in case["results"]}, reverse=True)
    lines = [
        f"**Accuracy vs compression on Fashion-MNIST** ({_mode(data)}; [{stem}.md]({link}/{stem}.md)). "
        "Test accuracy (%) after the same short fine-tuning, before it in brackets, and the MAC ratio reached, "
        "per MAC target:\n"
    ]
    headers = ["model", "method"] + [f"target {t}" for t in targets]
    rows = []
    for case in data["models"]:
        tuned = case["baseline"].get("test_accuracy_after_ft")
        name = f"{case['model']} (baseline {_pct(case['baseline']['test_accuracy'])}" + (
            f"; {_pct(tuned)} fine-tuned the same way)" if tuned is not None else ")"
        )
        for method, label in methods.items():
            by_target = {r["target"]: r for r in case["results"] if r["method"] == method}
            if not by_target:
                continue
            cells = []
            for t in targets:
                r = by_target.get(t)
                if r is None:
                    cells.append("-")
                elif r["status"] != "ok":
                    cells.append(r["status"])
                else:
                    cells.append(
                        f"{_pct(r['test_accuracy_after_ft'])} ({_pct(r['test_accuracy_before_ft'])}) "
                        f"@{r['mac_ratio']:.2f}"
                    )
            rows.append([name, label, *cells])
    lines.append(_common.md_table(headers, rows))
    goals = data.get("goals", {})
    if goals:
        within = goals.get("within_1_point_at_0.5_after_ft", {})
        parts = [
            f"{model}: best {methods.get(v['best_method'], v['best_method'])} {100 * v['best_delta_after_ft']:+.2f} points"
            + (
                f" ({100 * v['best_delta_vs_finetuned_baseline']:+.2f} against the fine-tuned baseline)"
                if "best_delta_vs_finetuned_baseline" in v
                else ""
            )
            for model, v in within.items()
        ]
        lines.append(
            f"- Within 1 point of the baseline at 0.5 MACs after fine-tuning: "
            f"{'yes' if goals.get('goal_within_1_point_holds') else 'NO'} ({'; '.join(parts)})."
        )
        comparisons = goals.get("greedy_above_uniform_before_ft", {})
        parts = [
            f"{model} " + ", ".join(f"{t}: {_pct(c['greedy'])} vs {_pct(c['uniform'])}" for t, c in per.items())
            for model, per in comparisons.items()
        ]
        lines.append(
            f"- Greedy weight SVD above uniform weight SVD before fine-tuning: "
            f"{'yes' if goals.get('goal_greedy_above_uniform_holds') else 'NO'} ({'; '.join(parts)})."
        )
    if data.get("plot"):
        lines.append(f"\n![Fashion-MNIST test accuracy against MAC ratio]({link}/{data['plot']})")
    return "\n".join(lines) + "\n"


def summary_selection_cost(stem: str, data: dict[str, Any], link: str) -> str:
    rows = [
        (
            c["model"],
            c["num_candidate_evaluations"],
            c["num_eval_calls"],
            f"{c['total_seconds']:.1f}",
            f"{c['eval_callback_seconds']:.1f}",
            f"{c['svd_seconds']:.1f}",
            f"{100 * c['overhead_share']:.1f}% ({100 * c['overhead_excluding_svd_share']:.1f}%)",
            _x(c["speedup_vs_rebuild_per_candidate"]),
            _x(c["speedup_vs_aimet_copy_per_candidate"]) if "speedup_vs_aimet_copy_per_candidate" in c else "-",
            _x(c["speedup_vs_save_reload_per_candidate"]),
        )
        for c in data["cases"]
    ]
    headers = (
        "model",
        "candidates",
        "eval calls",
        "compress_model s",
        "in callback s",
        "SVD s",
        "toolkit overhead (w/o SVD)",
        "vs rebuild",
        "vs AIMET's copy",
        "vs save+reload",
    )
    sweep = sorted((c for c in data["cases"] if "callback_images" in c), key=lambda c: c["callback_images"])

    def sizes(*goals: str) -> str:
        met = [str(c["callback_images"]) for c in sweep if all(c["goals"].get(goal, False) for goal in goals)]
        return ", ".join(met) if met else "none"

    toolkit = [c["toolkit_cost_ratio_rebuild_vs_in_place"] for c in sweep]
    low10, rebuild10, aimet10 = (
        "overhead_below_10_percent",
        "selection_10x_faster_than_rebuild",
        "selection_10x_faster_than_aimet_copy",
    )
    goals = (
        f"\nResNet50's two goals, with the callback on {', '.join(str(c['callback_images']) for c in sweep)} "
        f"images per call: overhead below 10% with {sizes(low10)}; at least 10x faster than rebuilding with "
        f"`rewrite_model` with {sizes(rebuild10)} (both: {sizes(low10, rebuild10)}); at least 10x faster than AIMET's "
        f"copy (`clone_model` + `set_weights`) with {sizes(aimet10)} (both: {sizes(low10, aimet10)}). A cheaper callback "
        "helps the second and hurts the first; the callback-free comparison, what each approach adds per candidate, "
        f"is x{min(toolkit):.0f} to x{max(toolkit):.0f} (see [{stem}.md]({link}/{stem}.md)).\n"
        if len(sweep) > 1
        else ""
    )
    return (
        f"**Selection cost** ({_mode(data)}; [{stem}.md]({link}/{stem}.md)): one greedy spatial-SVD "
        "`compress_model` run, and how much faster in-place candidate evaluation is per candidate than "
        "rebuilding the model (or saving and reloading it):\n\n"
        + _common.md_table(headers, rows)
        + goals
        + _ray_summary(data.get("ray"))
    )


def _ray_summary(ray: dict[str, Any] | None) -> str:
    """One paragraph on the Ray executor part of selection_cost.json (empty when it was not measured)."""
    if not ray or "callbacks" not in ray:
        return ""
    parts = []
    for entry in ray["callbacks"]:
        runs = [r for key, r in entry["executors"].items() if key != "local"]
        speedups = "/".join(f"x{r['speedup_vs_local']:.2f}" for r in runs)
        workers = "/".join(str(r["workers"]) for r in runs)
        parts.append(f"{entry['callback'].replace('_', '-')} callback {speedups} with {workers} workers")
    waiting = ray["callbacks"][0]["executors"]
    met = [str(r["workers"]) for key, r in waiting.items() if key != "local" and r["speedup_per_worker"] >= 0.8]
    one = next((r for key, r in waiting.items() if r["workers"] == 1 and key != "local"), None)
    overhead = (
        f"; toolkit overhead per candidate {waiting['local']['overhead_per_candidate_ms']:.1f} ms in process, "
        f"{one['overhead_per_candidate_ms']:.1f} ms on one Ray worker, whose start-up took {one['startup_seconds']:.0f} s"
        if one
        else ""
    )
    return (
        f"\nCandidates on Ray workers (`tfc.RayExecutor`, the {ray['jobs']} jobs of the digits CNN's table, "
        "against the in-process executor): "
        + "; ".join(parts)
        + f" (goal at least 0.8 x workers on the waiting callback: met with {', '.join(met) if met else 'none'})"
        + overhead
        + f". {ray['cores']} shared cores: the CPU-bound callback cannot gain from more workers than idle cores.\n"
    )


def summary_real_speed(stem: str, data: dict[str, Any], link: str) -> str:
    rows = []
    lost = []
    for case in data["models"]:
        for r in case["results"]:
            mem = r.get("peak_memory_ratio") or {}
            rows.append(
                (
                    f"{case['model']} {case['input_size']}px",
                    r["scheme"],
                    r["target"],
                    f"{r['mac_ratio']:.2f}",
                    _x(r["ideal_speedup"]),
                    _x(r.get("tf_b1", {}).get("speedup")),
                    _x(r.get("tf_b8", {}).get("speedup")),
                    _x(r.get("tflite_b1", {}).get("speedup")),
                    _x(r.get("tflite_b8", {}).get("speedup")),
                    f"{r['keras_file_size_ratio']:.2f}",
                    " / ".join("-" if mem.get(w) is None else f"{mem[w]:.2f}" for w in ("inference", "train_step"))
                    if mem
                    else None,
                )
            )
            summary = (r.get("layer_breakdown") or {}).get("summary", {}).get("b1")
            if summary and summary["most_time_lost"]:
                worst = summary["most_time_lost"][0]
                lost.append(
                    f"{case['model']} {r['scheme']}: the {summary['changed_layers']} changed layers held "
                    f"{summary['share_of_model_time']:.0%} of the time and ran {_x(summary['changed_layers_speedup'])} "
                    f"faster alone (ideal {_x(summary['changed_layers_ideal_speedup'])}); "
                    f"{len(summary['slower_than_original'])} got slower; most time lost: {worst['layer']} "
                    f"({_x(worst['speedup'])} at MAC ratio {worst['mac_ratio']:.2f})"
                )
    headers = (
        "model",
        "scheme (uniform)",
        "target",
        "MAC ratio",
        "ideal",
        "TF b1",
        "TF b8",
        "TFLite b1",
        "TFLite b8",
        ".keras size",
        "peak mem. infer / train",
    )
    text = (
        f"**Real speed of fewer MACs** ({_mode(data)}; [{stem}.md]({link}/{stem}.md)): CPU speed-ups "
        "(original / compressed latency, measured side by side; ideal = 1 / MAC ratio), file size and peak memory "
        "ratios (compressed / original); every eligible layer at one rank, or every channel group at one kept "
        "fraction:\n\n" + _common.md_table(headers, rows)
    )
    if lost:
        text += "\nWhere the time goes at batch 1, target 0.5 (each changed layer timed alone):\n\n"
        text += "".join(f"- {line}.\n" for line in lost)
    return text


def summary_latency_plans(stem: str, data: dict[str, Any], link: str) -> str:
    rows = []
    for case in data["models"]:
        for r in case["results"]:
            rows.append(
                (
                    f"{case['model']} {case['input_size']}px",
                    r["batch_size"],
                    case["target_comp_ratio"],
                    _x(r["mac_plan"]["measured_speedup"]),
                    _x(r["latency_plan"]["measured_speedup"]),
                    _x(r["latency_plan_vs_mac_plan_speed"]),
                )
            )
    headers = ("model", "batch", "target", "MAC plan speed-up", "latency plan speed-up", "latency vs MAC plan")
    return f"**MAC- vs latency-targeted plans** ({_mode(data)}; [{stem}.md]({link}/{stem}.md)):\n\n" + _common.md_table(
        headers, rows
    )


def summary_memory(stem: str, data: dict[str, Any], link: str) -> str:
    rows = [
        (row["scheme"], f"{row['extra_over_footprint_mb']:.0f}", f"{row['extra_over_weights']:.2f}x")
        for row in data["rows"]
    ]
    headers = ("scheme", "peak above the model's own (MB)", "in copies of the weights")
    return (
        f"**Peak memory of compress_model** ({data['model']} {data['input_size']}px, weights "
        f"{data['weights_mb']:.0f} MB; {_mode(data)}; [{stem}.md]({link}/{stem}.md); goal at most 4x):\n\n"
        + _common.md_table(headers, rows)
    )


def summary_coverage(stem: str, data: dict[str, Any], link: str) -> str:
    import importlib.util

    # benchmarks/coverage.py is loaded by path: a module named plain "coverage" is another package's
    spec = importlib.util.spec_from_file_location("_coverage_benchmark", os.path.join(_common.HERE, "coverage.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return (
        f"**Supported models** ({_mode(data)}; [{stem}.md]({link}/{stem}.md)): every keras.applications family's "
        "smallest variant, random weights; full-rank rewrite of every decomposable layer, then greedy weight SVD and "
        "channel pruning to 0.5 MACs (ratio reached, layers changed) and a `.keras` round trip:\n\n"
        + module.table(data)
    )


SUMMARIES: dict[str, Callable[[str, dict[str, Any], str], str]] = {
    "coverage": summary_coverage,
    "accuracy": summary_accuracy,
    "selection_cost": summary_selection_cost,
    "real_speed": summary_real_speed,
    "latency_plans": summary_latency_plans,
    "memory": summary_memory,
}


def machine_line(records: list[tuple[str, dict[str, Any]]]) -> str:
    """One line: the CPU(s), cores and versions of the runs (one value when they agree) and the dates."""

    def values(key: str) -> str:
        found = sorted({str(d["machine"].get(key, "?")) for _, d in records})
        return found[0] if len(found) == 1 else " / ".join(found)

    dates = sorted(str(d["machine"].get("date", "?")) for _, d in records)
    span = dates[0][:10] if dates[0][:10] == dates[-1][:10] else f"{dates[0][:10]} to {dates[-1][:10]}"
    return (
        f"Machine: {values('cpu')}, {values('cores')} cores; Python {values('python')}, TensorFlow "
        f"{values('tensorflow')}, Keras {values('keras')}, numpy {values('numpy')}. Runs dated {span} (UTC)."
    )


def readme_section(records: list[tuple[str, dict[str, Any]]], link: str) -> str:
    parts = [
        START,
        "## Results",
        "",
        "Generated from `benchmarks/results/*.json` by `python benchmarks/report_results.py --readme`; "
        "`benchmarks/README.md` explains every number, and each benchmark's Markdown file has the full tables. "
        + machine_line(records),
        "",
    ]
    for stem, data in records:
        summary = SUMMARIES.get(data["benchmark"])
        if summary is None:
            parts.append(f"**{data['benchmark']}** ({_mode(data)}): see [{stem}.md]({link}/{stem}.md).\n")
            continue
        try:
            parts.append(summary(stem, data, link))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{stem}.json does not look like a {data['benchmark']} record ({err!r})") from None
    parts.append(END)
    return "\n".join(parts) + "\n"


def update_readme(path: str, section: str) -> None:
    """Replace the text between the markers (markers included), or append the section at the end."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    start, end = text.find(START), text.find(END)
    if start >= 0 and end > start:
        text = text[:start] + section + text[end + len(END) :].lstrip("\n")
        if not text.endswith("\n"):
            text += "\n"
    elif start >= 0 or end >= 0:
        raise ValueError(f"{path}: found only one of the markers {START} / {END}; fix the README by hand.")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_text_atomic(path, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=_common.DEFAULT_OUTPUT_DIR, help="folder holding the results")
    parser.add_argument("-o", "--output", default=None, help="Markdown file to write (default OUTPUT_DIR/RESULTS.md)")
    parser.add_argument(
        "--readme",
        nargs="?",
        const=DEFAULT_README,
        default=None,
        help=f"also regenerate the README's Results section between the markers (default file {DEFAULT_README})",
    )
    args = parser.parse_args()
    records = load_results(args.output_dir)
    if not records:
        print(f"no benchmark results in {args.output_dir}; run the scripts first", file=sys.stderr)
        return 1
    output = args.output or os.path.join(args.output_dir, "RESULTS.md")
    write_text_atomic(output, results_markdown(args.output_dir, records))
    print("wrote", output)
    if args.readme:
        readme = os.path.abspath(args.readme)
        link = os.path.relpath(os.path.abspath(args.output_dir), os.path.dirname(readme)).replace(os.sep, "/")
        try:
            update_readme(readme, readme_section(records, link))
        except (OSError, ValueError) as err:
            print(f"report_results.py: {err}", file=sys.stderr)
            return 1
        print("updated the Results section of", readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
