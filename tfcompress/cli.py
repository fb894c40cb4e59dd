"""The ``tfcompress`` command line (``python -m tfcompress`` does the same).

Exit codes: 0 success, 2 bad usage, 1 failure with a one-line error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tfcompress`` command.

    Example:
        >>> build_parser().parse_args(["demo", "--epochs", "2"]).epochs
        2
    """
    parser = argparse.ArgumentParser(
        prog="tfcompress", description="Make trained Keras 3 models cheaper by low-rank decomposition."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="train a small CNN on scikit-learn's digits, compress it to half the MACs, save and export it",
        description="Train a small CNN on scikit-learn's bundled digits, compress it with spatial SVD to a MAC "
        "target, fine-tune briefly, print the stats and write the model, SavedModel and stats JSON.",
    )
    demo.add_argument("-o", "--output", default="tfcompress_demo_output", help="output folder (default: %(default)s)")
    demo.add_argument("--target", type=float, default=0.5, help="MAC ratio to reach (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=20, help="training epochs (default: %(default)s)")
    demo.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning epochs (default: %(default)s)")
    demo.add_argument("-q", "--quiet", action="store_true", help="print only the final summary line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # only for this process: the CLI is an application
    try:
        if args.command == "demo":
            if not 0 < args.target <= 1:
                parser.error("--target must be in (0, 1]")
            from .demo import run_demo

            result = run_demo(
                args.output,
                target=args.target,
                epochs=args.epochs,
                finetune_epochs=args.finetune_epochs,
                verbose=0 if args.quiet else 1,
            )
            if args.quiet:
                print(
                    f"MAC ratio {result.mac_ratio:.3f}, accuracy {result.baseline_accuracy:.4f} -> "
                    f"{result.finetuned_accuracy:.4f}, output in {result.output_dir}"
                )
            return 0
    except KeyboardInterrupt:
        print("tfcompress: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError) as err:
        print(f"tfcompress: error: {err}", file=sys.stderr)
        return 1
    return 2
