"""The argument parser of the ``tfcompress`` command: its four commands, their options, help texts and examples.

Only the standard library and light modules of ours are imported, so ``--help``, ``--version`` and usage errors
answer without TensorFlow (see :mod:`tfcompress.cli`).
"""

from __future__ import annotations

import argparse
import textwrap

from ._version import __version__
from .cli_inspect import SCHEMES as _SCHEMES

__all__ = ["build_parser"]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in the epilogs as written (descriptions are wrapped by :func:`_paragraphs`)."""


def _paragraphs(*texts: str) -> str:
    """Wrap each paragraph to 79 columns, blank lines between them (argparse's raw formatter keeps them)."""
    return "\n\n".join(textwrap.fill(" ".join(t.split()), width=79) for t in texts)


def _manual_pair(text: str) -> tuple[str, float]:
    name, sep, ratio = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=RATIO (e.g. conv2=0.5), got {text!r}")
    try:
        value = float(ratio)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the ratio in {text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"the ratio in {text!r} must be in (0, 1] (compressed / original cost)")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tfcompress`` command.

    Example:
        >>> build_parser().parse_args(["demo", "--epochs", "2"]).epochs
        2
        >>> args = build_parser().parse_args(["compress", "m.keras", "--manual", "conv2=0.5", "-o", "out"])
        >>> args.manual
        [('conv2', 0.5)]
    """
    parser = argparse.ArgumentParser(
        prog="tfcompress",
        description="Make trained Keras 3 models cheaper by low-rank decomposition.",
        epilog="examples:\n"
        "  tfcompress demo\n"
        "  tfcompress inspect model.keras\n"
        "  tfcompress compress model.keras --eval my_eval:accuracy --data val.npz --target 0.5 -o out\n"
        "  tfcompress report out/stats.json -o out/report.html\n\n"
        "Run 'tfcompress COMMAND --help' for the options of a command.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"tfcompress {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose", action="store_true", help="also show TensorFlow's start-up and log lines (hidden by default)"
    )

    def command(name: str, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
        """A subcommand with the common options; its examples (the epilog) kept as written."""
        return sub.add_parser(
            name, parents=[common], help=help, description=description, epilog=epilog, formatter_class=_Formatter
        )

    # ---- demo
    demo = command(
        "demo",
        help="train a small CNN on scikit-learn's digits, compress it to half the MACs, save and export it",
        description=_paragraphs(
            "Train a small CNN on scikit-learn's bundled digits, compress it with spatial SVD to a MAC "
            "target, fine-tune briefly, print the stats and write the model, SavedModel and stats JSON."
        ),
        epilog="example:\n  tfcompress demo -o demo_output --target 0.5",
    )
    demo.add_argument("-o", "--output", default="tfcompress_demo_output", help="output folder (default: %(default)s)")
    demo.add_argument("--target", type=float, default=0.5, help="MAC ratio to reach (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=20, help="training epochs (default: %(default)s)")
    demo.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning epochs (default: %(default)s)")
    demo.add_argument("-q", "--quiet", action="store_true", help="print only the final summary line")

    # ---- inspect
    inspect = command(
        "inspect",
        help="per-layer MACs, parameters, max ranks and eligibility of a .keras model",
        description=_paragraphs(
            "Print one row per layer that has MACs or parameters: its MACs per sample, parameters, "
            "and for each scheme (weight_svd, spatial_svd, tucker) the maximum rank when the layer can be "
            "compressed with it, '-' when it cannot (the reasons are listed below the table), and the model "
            "totals. The model is loaded with keras.models.load_model(path, safe_mode=True)."
        ),
        epilog="examples:\n  tfcompress inspect model.keras\n  tfcompress inspect model.keras --json > layers.json",
    )
    inspect.add_argument("model", metavar="MODEL.keras", help="a saved Sequential or Functional Keras model")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument(
        "--metric",
        choices=("mac", "memory"),
        default="mac",
        help="cost that must go down for a layer to count as eligible at rank 1 (default: %(default)s)",
    )

    # ---- compress
    compress = command(
        "compress",
        help="compress a .keras model to a target cost; writes the model, stats JSON and an HTML report",
        description=_paragraphs(
            "Compress MODEL.keras (loaded with keras.models.load_model(path, safe_mode=True)) with "
            "tfcompress.compress_model and write OUT/compressed.keras, OUT/stats.json and OUT/report.html.",
            "Auto mode (default): every eligible layer is evaluated alone at candidate ratios i/N, and each "
            "layer's ratio is chosen to reach --target with as little loss of score as possible. Manual mode "
            "(--manual): the listed layers are compressed at the given ratios.",
            "The eval function (--eval module:function) is called as function(model, iterations) and returns a "
            "float, higher is better (e.g. accuracy on held-out data). 'iterations' is the --data file loaded "
            "once as a dict {array name: numpy array} (np.load, no pickles), or None without --data. 'module' "
            "is an importable module name (the current folder is searched first) or the path of a .py file. "
            "The eval module is imported before the model is loaded, so it can also register custom Keras "
            "objects.",
            "Without --eval, a data-free score is used: how closely the outputs match the original model's on "
            "the inputs of --data's array 'x', or on a fixed random batch (seed 0) of the model's input shape. "
            "It is weaker than a real eval function and says so on stderr.",
            "Data-aware factors (the recommended path when data is at hand): when --data holds model inputs "
            "(an .npz with an array 'x', or an .npy array), the SVD and Tucker schemes fit each layer's factors to "
            "its real inputs (--samples sampled positions per layer) instead of to the kernel alone; they keep the "
            "layers' outputs much closer before any fine-tuning. --data-free turns this off.",
        ),
        epilog="examples:\n"
        "  tfcompress compress model.keras --eval my_eval:accuracy --data val.npz --target 0.5 -o out\n"
        "  tfcompress compress model.keras --data inputs.npy --target 0.5 -o out   # data-aware, output agreement\n"
        "  tfcompress compress model.keras --scheme weight_svd --multiplicity 8 --ignore conv1 --eval "
        "my_eval:accuracy -o out\n"
        "  tfcompress compress model.keras --manual conv2=0.4 conv3=0.6 -o out\n"
        "  tfcompress compress model.keras --scheme channel_pruning --data val.npz --eval my_eval:accuracy -o out\n"
        "  tfcompress compress model.keras --eval my_eval.py:accuracy --cache out/scores.json -o out\n\n"
        "my_eval.py:\n"
        "  import numpy as np\n"
        "  def accuracy(model, data):           # data = the --data npz as a dict\n"
        '      predictions = model.predict(data["x"], verbose=0)\n'
        '      return float(np.mean(predictions.argmax(1) == data["y"]))',
    )
    compress.add_argument("model", metavar="MODEL.keras", help="a saved Sequential or Functional Keras model")
    compress.add_argument("-o", "--output", metavar="OUT", required=True, help="output folder (created if missing)")
    compress.add_argument(
        "--scheme",
        choices=(*_SCHEMES, "channel_pruning"),
        default="spatial_svd",
        help="decomposition scheme, or channel_pruning (needs --data with model inputs 'x') (default: %(default)s)",
    )
    compress.add_argument(
        "--target",
        type=float,
        metavar="RATIO",
        default=None,
        help="whole-model cost ratio to reach, compressed / original, in (0, 1] (default: 0.5; auto mode only)",
    )
    compress.add_argument(
        "--metric", choices=("mac", "memory"), default="mac", help="cost that --target counts (default: %(default)s)"
    )
    compress.add_argument(
        "--eval",
        metavar="MODULE:FUNCTION",
        help="eval function(model, iterations) -> float, higher is better (default: data-free output agreement)",
    )
    compress.add_argument(
        "--data",
        metavar="FILE.npz",
        help="arrays passed to the eval function as a dict (see above); its array 'x' (or an .npy file's array) "
        "are the model inputs the data-aware factors and channel pruning sample",
    )
    compress.add_argument(
        "--samples",
        type=int,
        default=2000,
        metavar="N",
        help="sampled output positions per layer for the data-aware fits and channel pruning's least-squares "
        "refit (default: %(default)s)",
    )
    compress.add_argument(
        "--data-free",
        action="store_true",
        help="SVD and Tucker schemes: data-free factors (the kernel's truncated SVD) even when --data holds inputs",
    )
    compress.add_argument(
        "--ignore", metavar="NAME", nargs="+", action="extend", default=[], help="layers to leave alone (auto mode)"
    )
    compress.add_argument(
        "--multiplicity",
        type=int,
        default=1,
        metavar="M",
        help="round ranks up to a multiple of this (default: %(default)s)",
    )
    compress.add_argument(
        "--manual",
        metavar="NAME=RATIO",
        nargs="+",
        action="extend",
        type=_manual_pair,
        default=[],
        help="manual mode: compress exactly these layers at these ratios",
    )
    compress.add_argument(
        "--candidates",
        type=int,
        default=None,
        metavar="N",
        help="greedy search: candidate ratios i/N, i = 1..N-1 (default: 10; auto mode only)",
    )
    compress.add_argument(
        "--cache",
        metavar="SCORES.json",
        help="read and write the eval-score table here, so a rerun skips evaluations (auto mode only)",
    )
    compress.add_argument(
        "--max-score-drop",
        type=float,
        metavar="DROP",
        default=None,
        help="accuracy target: without --target, the cheapest plan whose whole-model score stays within DROP of the "
        "baseline; with --target, fail if the compressed model's score drops by more (auto mode only)",
    )
    compress.add_argument(
        "--allow-unreachable",
        action="store_true",
        help="when the target cannot be reached, write the most-compressed plan (with a warning) instead of failing",
    )
    compress.add_argument(
        "--allow-uncounted",
        action="store_true",
        help="with --metric mac, compress a model holding layers whose MACs are not known (see inspect); the MAC "
        "target and ratios then cover the counted layers only",
    )
    compress.add_argument("--no-report", action="store_true", help="do not write OUT/report.html (no matplotlib)")
    compress.add_argument("-q", "--quiet", action="store_true", help="no progress bar; print only a summary line")
    compress.set_defaults(subparser=compress)

    # ---- report
    report = command(
        "report",
        help="write the self-contained HTML report of a stats JSON file",
        description=_paragraphs(
            "Write one self-contained HTML file (plots embedded as PNG) from the stats.json that "
            "'tfcompress compress' or CompressionStats.to_json wrote. Needs matplotlib: "
            'pip install matplotlib, or pip install -e ".[report]" in the tfcompress checkout.'
        ),
        epilog="example:\n  tfcompress report out/stats.json -o out/report.html",
    )
    report.add_argument("stats", metavar="STATS.json", help="stats written by 'tfcompress compress' or to_json")
    report.add_argument(
        "-o", "--output", metavar="REPORT.html", help="file to write (default: report.html next to STATS.json)"
    )
    report.add_argument("--title", default="tfcompress report", help="page title (default: %(default)s)")
    return parser
