"""``svd_then_prune``: spatial SVD followed by channel pruning, the recipe for the best MAC reduction.

The recipe (from the compression guidebook we follow): to reach a MAC ratio ``C``,
first compress with spatial SVD to a milder ratio ``C_ssvd >= C`` (optionally
fine-tune), then prune channels of that model by ``C / C_ssvd`` (optionally
fine-tune again). Its ResNet-50 example: spatial SVD at 0.75, then channel pruning
at 0.66, for about 0.5 overall.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras

from ._checks import is_real
from .compress import compress_model
from .cost import model_cost
from .enums import CostMetric, Mode
from .params import ChannelPruningParameters, GreedySelectionParameters, SpatialSvdParameters, _check_ratio
from .pipeline.evaluator import Evaluator
from .rewrite import rewrite_model
from .stats import CompressionStats, write_json_atomic

__all__ = ["svd_then_prune", "SvdThenPruneResult", "SvdThenPruneStep"]

logger = logging.getLogger("tfcompress")

#: MAC ratios this close count as equally close to the target when choosing the final model
RATIO_TIE = 0.01


@dataclass
class SvdThenPruneStep:
    """One spatial-SVD ratio tried: its two compressions, scores and the whole-model ratios reached."""

    ssvd_ratio: float
    ssvd_stats: CompressionStats
    ssvd_score: float  # after the optional fine-tuning
    prune_ratio: float | None  # channel pruning target relative to the spatial-SVD model (None: not pruned)
    prune_stats: CompressionStats | None
    score: float  # final score, after the optional fine-tuning
    mac_compression_ratio: float  # final MACs / original MACs
    memory_compression_ratio: float
    meets_tolerance: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "ssvd_ratio": self.ssvd_ratio,
            "ssvd_stats": self.ssvd_stats.to_dict(),
            "ssvd_score": self.ssvd_score,
            "prune_ratio": self.prune_ratio,
            "prune_stats": None if self.prune_stats is None else self.prune_stats.to_dict(),
            "score": self.score,
            "mac_compression_ratio": self.mac_compression_ratio,
            "memory_compression_ratio": self.memory_compression_ratio,
            "meets_tolerance": self.meets_tolerance,
        }


@dataclass
class SvdThenPruneResult:
    """What :func:`svd_then_prune` tried and which model it returned (``steps[chosen]``)."""

    target_comp_ratio: float
    tolerance: float
    baseline_score: float
    steps: list[SvdThenPruneStep] = field(default_factory=list)
    chosen: int = -1
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> SvdThenPruneStep:
        return self.steps[self.chosen]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_comp_ratio": self.target_comp_ratio,
            "tolerance": self.tolerance,
            "baseline_score": self.baseline_score,
            "chosen": self.chosen,
            "steps": [s.to_dict() for s in self.steps],
            "notes": list(self.notes),
        }

    def to_json(self, path: str) -> None:
        """Write :meth:`to_dict` as JSON (atomically)."""
        write_json_atomic(path, self.to_dict())

    def __str__(self) -> str:
        lines = [
            f"svd_then_prune: target MAC ratio {self.target_comp_ratio}, baseline score {self.baseline_score:.4f}, "
            f"tolerance {self.tolerance}"
        ]
        for i, s in enumerate(self.steps):
            mark = "*" if i == self.chosen else " "
            prune = "-" if s.prune_ratio is None else f"{s.prune_ratio:.3f}"
            lines.append(
                f"{mark} spatial SVD {s.ssvd_ratio:.3f} (score {s.ssvd_score:.4f}) -> prune {prune}: "
                f"MAC ratio {s.mac_compression_ratio:.4f}, score {s.score:.4f}"
                + ("" if s.meets_tolerance else " (outside tolerance)")
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _finetuner(finetune: Any) -> Callable[[keras.Model], None] | None:
    if finetune is None:
        return None
    if callable(getattr(finetune, "train_model", None)):
        return lambda m: finetune.train_model(m, None, train_flag=True)
    if callable(finetune):
        return finetune
    raise TypeError(
        "svd_then_prune: finetune must be None, a function finetune(model) that trains the model in place, or a "
        f"trainer with train_model(model, layer, train_flag=True); got {type(finetune).__name__}."
    )


def _choose(result: SvdThenPruneResult) -> None:
    """Set ``result.chosen``: within tolerance, the MAC ratio closest to the target (ratios within ``RATIO_TIE`` of
    the closest are ties, the higher score wins); when no step is within tolerance, the best score, with a warning."""
    target, tolerance = result.target_comp_ratio, result.tolerance
    within = [i for i, s in enumerate(result.steps) if s.meets_tolerance]
    if within:
        # closest to the target; ratios within RATIO_TIE of the closest count as equally close (higher score wins)
        distance = {i: abs(result.steps[i].mac_compression_ratio - target) for i in within}
        closest = min(distance.values())
        near = [i for i in within if distance[i] <= closest + RATIO_TIE]
        result.chosen = max(near, key=lambda i: (result.steps[i].score, -distance[i]))
    else:
        result.chosen = max(range(len(result.steps)), key=lambda i: result.steps[i].score)
        message = (
            f"svd_then_prune: no final model is within tolerance {tolerance} of the baseline score "
            f"{result.baseline_score:.4f}; returning the best-scoring one ({result.best.score:.4f})."
        )
        result.notes.append(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def svd_then_prune(
    model: keras.Model,
    eval_callback: Callable[..., float],
    eval_iterations: Any,
    *,
    data: Any,
    target_comp_ratio: float,
    ssvd_ratios: Sequence[float] | None = None,
    finetune: Any = None,
    tolerance: float = 0.01,
    num_reconstruction_samples: int = 2000,
    allow_custom_downsample_ops: bool = False,
    num_comp_ratio_candidates: int = 10,
    modules_to_ignore: Iterable[Any] | None = None,
    multiplicity: int = 1,
    verbose: int = 1,
) -> tuple[keras.Model, SvdThenPruneResult]:
    """Spatial SVD at a few milder ratios, then channel pruning of each to the target; the best model wins.

    For each ``C_ssvd`` in ``ssvd_ratios`` (only those ``>= target_comp_ratio``): greedy
    spatial SVD of ``model`` to ``C_ssvd`` MACs, ``finetune``, then greedy channel pruning
    of that model to ``target / (its MAC ratio)``, ``finetune`` again. Of the final models
    whose score is within ``tolerance`` of the baseline, the one whose MAC ratio is
    closest to the target is returned (ratios within 0.01 of the closest count as
    ties, and the higher score wins); if none is within tolerance, the best-scoring
    one, with a warning.

    Args:
        model: trained Keras model (never modified).
        eval_callback, eval_iterations: as for :func:`tfcompress.compress_model`.
        data: model inputs for channel pruning (see :class:`ChannelPruningParameters`).
        target_comp_ratio: final MACs / original MACs.
        ssvd_ratios: spatial-SVD ratios to try; default ``(0.75, 0.85)`` clipped to at least the target.
        finetune: ``None``, ``finetune(model)`` training in place, or a trainer such as :class:`FitTrainer`.
        tolerance: how far below the baseline score a final model may be and still count.
        num_reconstruction_samples, allow_custom_downsample_ops, multiplicity: channel-pruning settings.
        num_comp_ratio_candidates: candidates per layer of both greedy searches.
        modules_to_ignore: layers neither step touches.
        verbose: 1 shows progress bars.

    Returns:
        ``(model, result)``: the chosen model and :class:`SvdThenPruneResult` with every step's stats.

    Example:
        >>> import numpy as np, keras, tfcompress as tfc
        >>> model = keras.Sequential([keras.Input((10, 10, 3)), keras.layers.Conv2D(16, 3, name="c1"),
        ...     keras.layers.Conv2D(16, 3, activation="relu", name="c2"), keras.layers.Conv2D(16, 3, name="c3"),
        ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(32, 10, 10, 3)).astype("float32")
        >>> ref = model.predict(x, verbose=0)
        >>> score = lambda m, _: -float(np.mean((m.predict(x, verbose=0) - ref) ** 2))
        >>> small, result = tfc.svd_then_prune(model, score, None, data=x, target_comp_ratio=0.6,
        ...     ssvd_ratios=[0.8], tolerance=1.0, num_reconstruction_samples=200, num_comp_ratio_candidates=4, verbose=0)
        >>> result.best.mac_compression_ratio <= 0.61
        True
    """
    target = _check_ratio(target_comp_ratio, "target_comp_ratio")
    if not is_real(tolerance) or not tolerance >= 0:
        raise ValueError(f"svd_then_prune: tolerance must be a number >= 0, got {tolerance!r}.")
    if ssvd_ratios is None:
        ratios = sorted({max(r, target) for r in (0.75, 0.85)})
    else:
        ratios = sorted({_check_ratio(r, "ssvd_ratios") for r in ssvd_ratios})
        below = [r for r in ratios if r < target]
        if below:
            raise ValueError(
                f"svd_then_prune: ssvd_ratios {below} are below the target {target}; channel pruning can only "
                "compress further, so give ratios >= the target."
            )
    tune = _finetuner(finetune)
    ignore = list(modules_to_ignore or [])
    evaluator = Evaluator(eval_callback, eval_iterations)
    original_macs = model_cost(model).macs
    original_params = model_cost(model).params
    result = SvdThenPruneResult(target, float(tolerance), evaluator(model, "the baseline model"))
    models = []
    for ratio in ratios:
        logger.info("svd_then_prune: spatial SVD to %.3f", ratio)
        if ratio < 1.0:
            ssvd_params = SpatialSvdParameters(
                Mode.auto,
                SpatialSvdParameters.AutoModeParams(
                    # a stage that cannot reach its ratio still yields a step; the recipe picks among the steps
                    GreedySelectionParameters(ratio, num_comp_ratio_candidates, allow_unreachable=True),
                    modules_to_ignore=ignore,
                ),
                multiplicity=multiplicity,
            )
            stage, ssvd_stats = compress_model(
                model, eval_callback, eval_iterations, "spatial_svd", CostMetric.mac, ssvd_params, verbose=verbose
            )
        else:
            stage = rewrite_model(model, {})
            ssvd_stats = CompressionStats(compress_scheme="spatial_svd", notes=["ratio 1.0: not decomposed"])
        if tune is not None:
            tune(stage)
        ssvd_score = evaluator(stage, f"the spatial-SVD model at {ratio}")
        stage_ratio = model_cost(stage).macs / original_macs
        prune_ratio = target / stage_ratio
        prune_stats = None
        if prune_ratio < 1.0 - 1e-6:
            logger.info("svd_then_prune: channel pruning to %.3f", prune_ratio)
            cp_params = ChannelPruningParameters(
                data,
                num_reconstruction_samples,
                allow_custom_downsample_ops,
                Mode.auto,
                ChannelPruningParameters.AutoModeParams(
                    GreedySelectionParameters(prune_ratio, num_comp_ratio_candidates, allow_unreachable=True),
                    modules_to_ignore=ignore,
                ),
                multiplicity=multiplicity,
            )
            stage, prune_stats = compress_model(
                stage, eval_callback, eval_iterations, "channel_pruning", CostMetric.mac, cp_params, verbose=verbose
            )
            if tune is not None:
                tune(stage)
        else:
            prune_ratio = None
        cost = model_cost(stage)
        step = SvdThenPruneStep(
            ssvd_ratio=ratio,
            ssvd_stats=ssvd_stats,
            ssvd_score=ssvd_score,
            prune_ratio=prune_ratio,
            prune_stats=prune_stats,
            score=evaluator(stage, f"the final model of spatial SVD {ratio}"),
            mac_compression_ratio=cost.macs / original_macs,
            memory_compression_ratio=cost.params / original_params,
        )
        step.meets_tolerance = step.score >= result.baseline_score - tolerance
        result.steps.append(step)
        models.append(stage)
    _choose(result)
    if result.best.mac_compression_ratio > target + 0.02:
        message = (
            f"svd_then_prune: the chosen model's MAC ratio {result.best.mac_compression_ratio:.4f} is above the target "
            f"{target}: channel pruning could not remove enough (see the steps' prune_stats notes and skipped layers)."
        )
        result.notes.append(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    elif not math.isclose(result.best.mac_compression_ratio, target, abs_tol=0.02):
        result.notes.append(
            f"the chosen model's MAC ratio {result.best.mac_compression_ratio:.4f} differs from the target {target}"
        )
    return models[result.chosen], result
