"""The ``tfcompress`` command line (``python -m tfcompress`` does the same).

Commands: ``demo`` (train, compress and export a small CNN on bundled digits),
``inspect`` (per-layer costs, ranks and eligibility of a ``.keras`` model),
``compress`` (:func:`tfcompress.compress_model` from the shell) and ``report``
(the HTML report of a stats JSON file). ``tfcompress COMMAND --help`` explains each.

Exit codes: 0 success, 2 bad usage, 1 failure with a one-line error on stderr
(a traceback is printed only for errors raised inside the user's own ``--eval``
function, where it is the useful part).

Start-up: this module imports only the standard library and light modules of ours, so
``--help``, ``--version`` and usage errors answer without importing TensorFlow. A command
imports it (through :func:`tfcompress._startup.import_tensorflow_quietly`, which drops
TensorFlow's start-up log lines unless ``--verbose``) only once its arguments are checked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import textwrap
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from ._startup import import_tensorflow_quietly
from ._version import __version__
from .archive import check_keras_archive
from .atomic import save_model_atomic
from .cli_eval import (
    DATA_FREE_WARNING,
    CLIError,
    _EvalFunctionError,
    _load_npz,
    _warn_on_first_call,
    _wrap_user_function,
    load_eval_function,
    output_agreement_eval,
)
from .cli_inspect import SCHEMES as _SCHEMES
from .cli_inspect import inspect_model, inspect_text
from .outputs import RunOutputs, check_writable_file

__all__ = ["main", "build_parser", "CLIError", "inspect_model", "load_eval_function", "output_agreement_eval"]

# ---------------------------------------------------------------- argument parsing


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

    # ---- demo
    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="train a small CNN on scikit-learn's digits, compress it to half the MACs, save and export it",
        description=_paragraphs(
            "Train a small CNN on scikit-learn's bundled digits, compress it with spatial SVD to a MAC "
            "target, fine-tune briefly, print the stats and write the model, SavedModel and stats JSON."
        ),
        epilog="example:\n  tfcompress demo -o demo_output --target 0.5",
        formatter_class=_Formatter,
    )
    demo.add_argument("-o", "--output", default="tfcompress_demo_output", help="output folder (default: %(default)s)")
    demo.add_argument("--target", type=float, default=0.5, help="MAC ratio to reach (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=20, help="training epochs (default: %(default)s)")
    demo.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning epochs (default: %(default)s)")
    demo.add_argument("-q", "--quiet", action="store_true", help="print only the final summary line")

    # ---- inspect
    inspect = sub.add_parser(
        "inspect",
        parents=[common],
        help="per-layer MACs, parameters, max ranks and eligibility of a .keras model",
        description=_paragraphs(
            "Print one row per layer that has MACs or parameters: its MACs per sample, parameters, "
            "and for each scheme (weight_svd, spatial_svd, tucker) the maximum rank when the layer can be "
            "compressed with it, '-' when it cannot (the reasons are listed below the table), and the model "
            "totals. The model is loaded with keras.models.load_model(path, safe_mode=True)."
        ),
        epilog="examples:\n  tfcompress inspect model.keras\n  tfcompress inspect model.keras --json > layers.json",
        formatter_class=_Formatter,
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
    compress = sub.add_parser(
        "compress",
        parents=[common],
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
        formatter_class=_Formatter,
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
    report = sub.add_parser(
        "report",
        parents=[common],
        help="write the self-contained HTML report of a stats JSON file",
        description=_paragraphs(
            "Write one self-contained HTML file (plots embedded as PNG) from the stats.json that "
            "'tfcompress compress' or CompressionStats.to_json wrote. Needs matplotlib: "
            'pip install matplotlib, or pip install -e ".[report]" in the tfcompress checkout.'
        ),
        epilog="example:\n  tfcompress report out/stats.json -o out/report.html",
        formatter_class=_Formatter,
    )
    report.add_argument("stats", metavar="STATS.json", help="stats written by 'tfcompress compress' or to_json")
    report.add_argument(
        "-o", "--output", metavar="REPORT.html", help="file to write (default: report.html next to STATS.json)"
    )
    report.add_argument("--title", default="tfcompress report", help="page title (default: %(default)s)")
    return parser


# ---------------------------------------------------------------- helpers


def _check_model_path(path: str) -> str:
    if not os.path.exists(path):
        raise CLIError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise CLIError(f"{path!r} is a folder; give a .keras model file (a SavedModel folder cannot be compressed)")
    if not path.endswith(".keras"):
        raise CLIError(f"{path!r} is not a .keras file; save the model with model.save('model.keras') first")
    return path


def _start_tensorflow(args: argparse.Namespace) -> None:
    """Import TensorFlow now that the arguments are checked: quietly, unless --verbose."""
    import_tensorflow_quietly(verbose=args.verbose)


class _StderrHandler(logging.Handler):
    """Writes the toolkit's phase messages to the current ``sys.stderr`` (looked up at each message)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"tfcompress: {record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _phase_messages(args: argparse.Namespace) -> Iterator[None]:
    """While a command runs, show the "tfcompress" logger's INFO messages on stderr (not with --quiet)."""
    if getattr(args, "quiet", False):
        yield
        return
    logger = logging.getLogger("tfcompress")
    handler = _StderrHandler(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _status(args: argparse.Namespace, text: str) -> None:
    """One line on stderr saying what a long phase is doing (not with --quiet)."""
    if not getattr(args, "quiet", False):
        print(f"tfcompress: {text}", file=sys.stderr, flush=True)


def _load_model(path: str, args: argparse.Namespace | None = None) -> Any:
    """``keras.models.load_model(path, safe_mode=True)`` with a one-line error for unreadable files."""
    import time

    import keras

    from .layers import SVDDense  # noqa: F401  (registers the decomposed layers for deserialisation)
    from .saving import load_error_message

    check_keras_archive(path)  # not a zip, truncated, or inflating past the limit: one line, before loading
    if args is not None:
        _status(args, f"loading {path} ...")
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            if not (args is not None and args.verbose):  # files saved without the optimizer's state say this
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = keras.models.load_model(path, safe_mode=True)
    except Exception as err:  # keras raises many kinds for a bad file; all mean "cannot load"
        raise CLIError(f"cannot load {path!r}: {load_error_message(err, path)}") from None
    if args is not None:
        _status(args, f"loaded model {model.name!r} ({len(model.layers)} layers) in {time.perf_counter() - start:.1f}s")
    return model


# ---------------------------------------------------------------- inspect


def _cmd_inspect(args: argparse.Namespace) -> int:
    path = _check_model_path(args.model)
    _start_tensorflow(args)
    model = _load_model(path, args)
    from .graph import check_graph_model

    check_graph_model(model)
    info = inspect_model(model, metric=args.metric)
    if args.json:
        print(json.dumps({"path": path, **info}, indent=2))
    else:
        print(inspect_text(info, path))
    return 0


# ---------------------------------------------------------------- compress


def _cmd_compress(args: argparse.Namespace) -> int:
    sub = args.subparser  # usage errors name the subcommand
    if args.manual:
        clashes = [
            flag
            for flag, value in (
                ("--target", args.target),
                ("--max-score-drop", args.max_score_drop),
                ("--candidates", args.candidates),
                ("--cache", args.cache),
                ("--ignore", args.ignore or None),
            )
            if value is not None
        ]
        if clashes:
            sub.error(f"--manual sets each layer's ratio itself; it cannot be combined with {', '.join(clashes)}")
    drop = args.max_score_drop
    target = (0.5 if drop is None else None) if args.target is None else args.target
    candidates = 10 if args.candidates is None else args.candidates
    if target is not None and not 0 < target <= 1:
        sub.error("--target must be in (0, 1] (compressed cost / original cost)")
    if drop is not None and not (math.isfinite(drop) and drop >= 0):
        sub.error("--max-score-drop must be a number >= 0 (the tolerated drop of the score below the baseline)")
    if candidates < 2:
        sub.error("--candidates must be >= 2")
    if args.multiplicity < 1:
        sub.error("--multiplicity must be >= 1")
    if args.scheme == "channel_pruning" and not args.data:
        sub.error("--scheme channel_pruning needs --data FILE.npz with an array 'x' of model inputs")
    if args.scheme == "channel_pruning" and args.data_free:
        sub.error("--data-free is for the SVD and Tucker schemes; channel pruning always refits from --data")
    if args.samples < 1:
        sub.error("--samples must be >= 1")

    model_path = _check_model_path(args.model)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise CLIError(f"-o {args.output!r} exists and is not a folder")
    # now, so a bad -o fails before the long part: the outputs are staged in the folder and moved into place
    # together at the end; a failed run leaves the folder as it was (no empty folder if it created it)
    with RunOutputs(args.output, ["compressed.keras", "stats.json", "report.html"]) as outputs:
        return _compress(args, model_path, target, candidates, outputs)


def _compress(args: argparse.Namespace, model_path: str, target: float | None, candidates: int, outputs: Any) -> int:
    if args.cache and not os.path.isdir(os.path.dirname(os.path.abspath(args.cache))):
        raise CLIError(f"--cache {args.cache!r}: its folder does not exist")
    if args.cache is not None:
        check_writable_file(args.cache, "--cache")  # before the first evaluation, not after the first layer
    if not args.no_report:
        from .report import _require_matplotlib

        _require_matplotlib()  # fail now, not after the long part
    _start_tensorflow(args)  # before the eval module, which may import TensorFlow itself
    user_function = load_eval_function(args.eval) if args.eval else None
    data = _load_npz(args.data) if args.data else None

    import tfcompress as tfc

    model = _load_model(model_path, args)
    from .graph import check_graph_model

    check_graph_model(model)  # a subclassed model: TypeError, one line
    if user_function is not None:
        evaluate = _wrap_user_function(user_function, args.eval)
    else:
        if data is not None:
            if "x" not in data:
                raise CLIError(
                    f"--data {args.data!r} has no array 'x' (it has {sorted(data)}); the data-free score needs 'x'"
                )
            source = f"the inputs in --data's array 'x' ({len(data['x'])} samples)"
            evaluate = output_agreement_eval(model, inputs=data["x"])
        else:
            source = "a fixed random batch (seed 0, 32 samples) of the model's input shape"
            evaluate = output_agreement_eval(model)
        evaluate = _warn_on_first_call(evaluate, DATA_FREE_WARNING.format(source=source))

    parameters_class = {
        "weight_svd": tfc.WeightSvdParameters,
        "spatial_svd": tfc.SpatialSvdParameters,
        "tucker": tfc.TuckerParameters,
        "channel_pruning": tfc.ChannelPruningParameters,
    }[args.scheme]
    leading: tuple = ()
    keywords: dict[str, Any] = {"multiplicity": args.multiplicity}
    if args.scheme == "channel_pruning":
        if data is None or "x" not in data:
            raise CLIError(f"--data {args.data!r} has no array 'x' of model inputs, which channel_pruning samples")
        leading = (data["x"], args.samples, False)
    elif data is not None and not args.data_free:
        if "x" in data:
            keywords.update(data=data["x"], num_reconstruction_samples=args.samples)
        else:
            print(
                f"note: --data {args.data!r} has no array 'x' of model inputs: the factors are data-free "
                "(fitted to the kernels only)",
                file=sys.stderr,
                flush=True,
            )
    if args.manual:
        parameters = parameters_class(
            *leading,
            tfc.Mode.manual,
            parameters_class.ManualModeParams(list(args.manual)),
            **keywords,
        )
    else:
        greedy = tfc.GreedySelectionParameters(
            target_comp_ratio=target,
            num_comp_ratio_candidates=candidates,
            saved_eval_scores_dict=args.cache,
            allow_unreachable=args.allow_unreachable,
            max_score_drop=args.max_score_drop,
        )
        parameters = parameters_class(
            *leading,
            tfc.Mode.auto,
            parameters_class.AutoModeParams(greedy, modules_to_ignore=list(args.ignore)),
            **keywords,
        )
    compressed, stats = tfc.compress_model(
        model,
        evaluate,
        data,
        args.scheme,
        args.metric,
        parameters,
        verbose=0 if args.quiet else 1,
        allow_uncounted_macs=args.allow_uncounted,
    )
    if user_function is None:
        stats.score_name = "output fidelity (data-free; minus the relative squared error, 0 = identical outputs)"
    else:
        stats.score_name = f"{args.eval} (eval function)"

    save_model_atomic(compressed, outputs.path("compressed.keras"))
    stats.to_json(outputs.path("stats.json"))
    if not args.no_report:
        from .report import report

        report(stats, outputs.path("report.html"))
    moved = outputs.commit()
    files = {
        what: moved[name]
        for what, name in (("model", "compressed.keras"), ("stats", "stats.json"), ("report", "report.html"))
        if name in moved
    }
    if args.quiet:
        print(
            f"MAC ratio {stats.mac_compression_ratio:.3f}, parameter ratio {stats.memory_compression_ratio:.3f}, "
            f"score {stats.baseline_model_accuracy:.4f} -> {stats.compressed_model_accuracy:.4f}, "
            f"output in {args.output}"
        )
    else:
        print()
        print(stats)
        print()
        for what, path in files.items():
            note = "  (without the optimizer's state; import tfcompress before loading it)" if what == "model" else ""
            print(f"  wrote {what:<7} {path}{note}")
    return 0


# ---------------------------------------------------------------- report


def _cmd_report(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.stats):
        raise CLIError(f"no such file: {args.stats!r}")
    from .report import report
    from .stats import CompressionStats

    try:
        stats = CompressionStats.from_json(args.stats)
    except UnicodeDecodeError:
        raise CLIError(f"{args.stats!r} is not a stats JSON file (not UTF-8 text)") from None
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(args.stats)), "report.html")
    print(f"wrote {report(stats, output, title=args.title)}")
    return 0


# ---------------------------------------------------------------- main


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the chosen command (TensorFlow is imported inside, once its arguments are checked)."""
    if args.command == "demo":
        if not 0 < args.target <= 1:
            parser.error("--target must be in (0, 1]")
        _start_tensorflow(args)
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
    if args.command == "inspect":
        return _cmd_inspect(args)
    if args.command == "compress":
        return _cmd_compress(args)
    if args.command == "report":
        return _cmd_report(args)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Example:
        >>> main(["report", "no_such_stats.json"])  # prints "tfcompress: error: no such file: ..." on stderr
        1
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with _phase_messages(args):
            return _dispatch(parser, args)
    except KeyboardInterrupt:
        print("tfcompress: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `tfcompress inspect m.keras --json | head`: not an error worth a message
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except _EvalFunctionError as err:
        cause = err.__cause__
        if cause is not None:
            traceback.print_exception(type(cause), cause, cause.__traceback__, file=sys.stderr)
        print(f"tfcompress: error: {err}", file=sys.stderr)
        return 1
    except (CLIError, OSError, ValueError, TypeError, ImportError, NotImplementedError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"tfcompress: error: {message}", file=sys.stderr)
        return 1
