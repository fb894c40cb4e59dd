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
import os
import sys
import traceback
from collections.abc import Iterator, Sequence

from .cli_compress import run_compress
from .cli_eval import CLIError, _EvalFunctionError, load_eval_function, output_agreement_eval
from .cli_inspect import inspect_model, inspect_text
from .cli_load import check_model_path, load_model, start_tensorflow
from .cli_parser import build_parser

__all__ = ["main", "build_parser", "CLIError", "inspect_model", "load_eval_function", "output_agreement_eval"]


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


# ---------------------------------------------------------------- inspect


def _cmd_inspect(args: argparse.Namespace) -> int:
    path = check_model_path(args.model)
    start_tensorflow(args)
    model = load_model(path, args)
    from .graph import check_graph_model

    check_graph_model(model)
    info = inspect_model(model, metric=args.metric)
    if args.json:
        print(json.dumps({"path": path, **info}, indent=2))
    else:
        print(inspect_text(info, path))
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
        start_tensorflow(args)
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
        return run_compress(args)
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
