"""``tfcompress compress``: its arguments checked against each other, the eval function or data-free score chosen,
:func:`tfcompress.compress_model` run, and the model, stats and report written together.

TensorFlow is imported inside :func:`run_compress`, after every usage error has been reported.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

from .atomic import save_model_atomic
from .cli_eval import (
    DATA_FREE_WARNING,
    CLIError,
    _load_npz,
    _warn_on_first_call,
    _wrap_user_function,
    load_eval_function,
    output_agreement_eval,
)
from .cli_load import check_model_path, load_model, start_tensorflow
from .outputs import RunOutputs, check_writable_file

__all__ = ["run_compress"]


def run_compress(args: argparse.Namespace) -> int:
    """Run ``tfcompress compress`` with parsed ``args``; returns the exit code (usage errors exit through argparse).

    Example:
        >>> from tfcompress.cli_parser import build_parser
        >>> run_compress(build_parser().parse_args(["compress", "missing.keras", "-o", "out"]))
        Traceback (most recent call last):
        tfcompress.cli_eval.CLIError: no such file: 'missing.keras'
    """
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

    model_path = check_model_path(args.model)
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
    start_tensorflow(args)  # before the eval module, which may import TensorFlow itself
    user_function = load_eval_function(args.eval) if args.eval else None
    data = _load_npz(args.data) if args.data else None

    import tfcompress as tfc

    model = load_model(model_path, args)
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
