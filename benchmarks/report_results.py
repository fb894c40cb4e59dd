"""Gather the Markdown tables of the benchmark results into one "Results" section.

    python benchmarks/report_results.py                         # reads benchmarks/results/*.json
    python benchmarks/report_results.py --output-dir DIR -o results.md

Each ``NAME.json`` written by a benchmark script has a ``NAME.md`` next to it; this script checks that the JSON
is a benchmark record, puts the sections in a fixed order, and writes ``RESULTS.md`` (or ``-o``) atomically.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import _common

from tfcompress.atomic import write_text_atomic

ORDER = ("selection_cost", "real_speed", "latency_plans")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=_common.DEFAULT_OUTPUT_DIR, help="folder holding the results")
    parser.add_argument("-o", "--output", default=None, help="Markdown file to write (default OUTPUT_DIR/RESULTS.md)")
    args = parser.parse_args()
    sections = {}
    for path in sorted(glob.glob(os.path.join(args.output_dir, "*.json"))):
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, json.JSONDecodeError):
            continue
        name = data.get("benchmark") if isinstance(data, dict) else None
        markdown = os.path.splitext(path)[0] + ".md"
        if name and os.path.exists(markdown):
            with open(markdown, encoding="utf-8") as handle:
                sections[name] = handle.read().replace("\n## ", "\n### ").replace("## ", "### ", 1)
    if not sections:
        print(f"no benchmark results in {args.output_dir}; run the scripts first", file=sys.stderr)
        return 1
    names = [n for n in ORDER if n in sections] + sorted(n for n in sections if n not in ORDER)
    text = "## Results\n\n" + "\n".join(sections[n] for n in names)
    output = args.output or os.path.join(args.output_dir, "RESULTS.md")
    write_text_atomic(output, text)
    print("wrote", output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
