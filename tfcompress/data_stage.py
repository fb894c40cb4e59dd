"""The data-aware stage of one ``compress_model`` run (issue 18): the candidates' moments, their fitted kernels
during the selection, and the forward-order refit of the final model.

:class:`DataAwareRun` reads the sampled inputs once, gives each selection candidate a :class:`CandidateFit` (its
layer's input moments, read in one pass of the original model and shared by every rank and scheme of the layer),
and refits the built model in forward order (:func:`tfcompress.data_fit.refit_forward`); :class:`Clock` keeps the
fitting time and the one layer problem held at a time. The math is in :mod:`tfcompress.data_aware`, the Keras
side of one layer's fit in :mod:`tfcompress.data_fit`.

Example:
    >>> import numpy as np
    >>> from tfcompress.data_aware import MomentAccumulator
    >>> acc = MomentAccumulator(3); acc.add(np.random.default_rng(0).normal(size=(40, 3)))
    >>> fit = CandidateFit(acc.moments(), Clock())
    >>> fit.fitted, fit.clock.seconds
    ({}, 0.0)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from .data_aware import FitProblem, Moments
from .data_fit import (
    FitReport,
    composed_kernel,
    fit_layer,
    fitting_threads,
    layer_problem,
    refit_forward,
    sample_images,
    selection_moments,
)

__all__ = ["Clock", "CandidateFit", "DataAwareRun"]


@dataclass
class Clock:
    """Seconds spent fitting, shared by every candidate of one run, and the last layer's :class:`FitProblem` (the
    selection tries every rank of one layer in a row: its rank-independent products are computed once; one layer's
    at a time, so the memory stays ``O(d²)`` of one layer beside the moments)."""

    seconds: float = 0.0
    problem_key: tuple | None = None
    problem: FitProblem | None = None

    def problem_for(self, layer: Any, scheme: str, moments: Moments) -> FitProblem:
        key = (id(layer), scheme, id(moments))
        if self.problem_key != key:
            self.problem_key, self.problem = None, None  # drop the old one before building the next
            self.problem = layer_problem(layer, scheme, moments)
            self.problem.shared = True  # every candidate rank of the layer: refits made for all ranks at once
            self.problem_key = key
        return self.problem  # type: ignore[return-value]


@dataclass
class CandidateFit:
    """What a selection candidate needs for data-aware kernels: its layer's input moments (computed once per layer,
    shared by every rank and every per-layer scheme of ``compress_scheme="auto"``) and the run's fitting clock."""

    moments: Moments
    clock: Clock
    tag: str = ""
    #: the factors of every rank fitted so far (in the layer's dtype; fewer weights than the kernel, or the rank
    #: would not be a candidate): a whole plan scored after the per-layer scores (the two-plan check, the accuracy
    #: target's plans) takes its layers' factors from here instead of building each layer's problem again
    fitted: dict[tuple[str, Any], list[np.ndarray]] = field(default_factory=dict, repr=False)

    def kernel(self, layer: Any, scheme: str, rank: Any, dtype: Any) -> np.ndarray:
        """The original-shaped kernel equivalent to ``layer``'s data-aware factors at ``rank``."""
        start = time.perf_counter()
        key = (scheme, tuple(rank) if isinstance(rank, list | tuple) else int(rank))
        with fitting_threads(self.moments):
            weights = self.fitted.get(key)
            if weights is None:
                problem = self.clock.problem_for(layer, scheme, self.moments)
                weights = self.fitted[key] = fit_layer(layer, scheme, rank, self.moments, problem)[0]
            kernel = composed_kernel(layer, scheme, weights)
        self.clock.seconds += time.perf_counter() - start
        return np.asarray(kernel, dtype=dtype)


class DataAwareRun:
    """The data-aware side of one ``compress_model`` run: the sampled inputs, the candidates' moments (read once,
    from the original model, before the selection) and the forward-order refit of the final model.

    ``tag`` (the number of samples and a digest of the sampled inputs) keeps a score cache of data-aware
    candidates apart from data-free ones and from other data.
    """

    def __init__(self, model: keras.Model, parameters: Any) -> None:
        import hashlib

        self.samples = int(parameters.num_reconstruction_samples)
        self.images = sample_images(parameters.data, model, self.samples, type(parameters).__name__)
        digest = hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).hexdigest()[:12]
        self.tag = f"data{self.samples}:{digest}"
        self.clock = Clock()
        self.collect_seconds = 0.0
        self.report: FitReport | None = None

    def attach(self, model: keras.Model, candidates: list[Any], stats: Any) -> None:
        """Give each readable candidate its :class:`CandidateFit` (one forward pass for all of them); the others
        keep data-free kernels, with the reason in ``stats.notes``."""
        layers = {c.path: (c.ref.layer, c.scheme) for c in candidates}
        moments, reasons, seconds = selection_moments(model, layers, self.images, self.samples)
        self.collect_seconds += seconds
        for candidate in candidates:
            candidate.data_tag = self.tag  # the cache tag of every candidate of a data-aware run, fitted or not
            if candidate.path in moments:
                candidate.data_fit = CandidateFit(moments[candidate.path], self.clock, self.tag)
        stats.notes.append(
            f"data-aware factors: {len(self.images)} input(s), {self.samples} sampled positions per layer; "
            f"{len(moments)} of {len(candidates)} layer(s) fitted to their inputs"
        )
        for path, why in reasons.items():
            stats.notes.append(f"data-aware factors: layer '{path}' keeps data-free factors: {why}")

    def refit(self, original: keras.Model, compressed: keras.Model, paths: list[str], stats: Any) -> None:
        """Refit ``paths`` of ``compressed`` in forward order (asymmetric); notes and timings into ``stats``."""
        self.clock.problem_key, self.clock.problem = None, None  # the selection's last layer: not needed any more
        report = refit_forward(original, compressed, self.images, self.samples, only={p: ("", 0) for p in paths})
        self.collect_seconds += report.collect_seconds
        self.clock.seconds += report.fit_seconds
        if self.report is None:
            self.report = report
        else:
            self.report.layers.update(report.layers)
            self.report.skipped.update(report.skipped)
        for name, fit in report.layers.items():
            for note in fit.notes:
                stats.notes.append(f"data-aware factors: layer '{name}': {note}")
        for name, why in report.skipped.items():
            if not any(f"'{name}' keeps data-free" in n for n in stats.notes):
                stats.notes.append(f"data-aware factors: layer '{name}' keeps data-free factors: {why}")

    def finish(self, stats: Any) -> None:
        """Timings (beside ``svd_seconds``) and the summary of the final fits into ``stats``."""
        stats.timings["data_aware_collect_seconds"] = self.collect_seconds
        stats.timings["data_aware_fit_seconds"] = self.clock.seconds
        if self.report and self.report.layers:
            fits = list(self.report.layers.values())
            fitted = float(np.mean([f.relative_error for f in fits]))
            free = float(np.mean([f.data_free_relative_error for f in fits]))
            stats.notes.append(
                f"data-aware factors: final model refitted in forward order ({len(fits)} layer(s)): mean relative "
                f"output error {fitted:.4g} (data-free factors on the same inputs: {free:.4g})"
            )
