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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from .data_aware import FitProblem, Moments
from .data_fit import (
    FitReport,
    call_counts,
    composed_kernel,
    fit_layer,
    fitting_threads,
    input_width,
    layer_problem,
    leading_within,
    readable_reason,
    refit_forward,
    sample_images,
    selection_moments,
    weights_budget,
)

__all__ = ["Clock", "CandidateFit", "DataAwareRun", "MomentStore", "moments_budget"]

#: the selection's input moments held at once (:class:`MomentStore`): this share of the model's weights, at least
#: ``MOMENTS_MIN_BYTES``
MOMENTS_SHARE = 1.0
MOMENTS_MIN_BYTES = 64 * 2**20


def moments_budget(model: keras.Model) -> int:
    """Bytes of candidate input moments :class:`MomentStore` holds at once by default: ``max(MOMENTS_MIN_BYTES,
    MOMENTS_SHARE x the weights' bytes)``.

    Example:
        >>> import keras
        >>> moments_budget(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])) == 64 * 2**20
        True
    """
    return weights_budget(model, MOMENTS_SHARE, MOMENTS_MIN_BYTES)


class MomentStore:
    """The selection candidates' input moments, read from the (never changed) original model when first needed.

    One pass of the sample images fetches the layer asked for and, while their moments fit in ``keep_bytes``
    together, the next layers in ``layers``' order (the candidates' order: forward); the layers held before are let
    go first. The selection scores one layer's ranks after another, so a run pays a few passes instead of holding
    every layer's ``O(width²)`` float64 moment at once (ResNet50's spatial-SVD candidates: 816 MB, eight times its
    weights). The sampled positions depend only on the layer's name, so a layer's moments are the same whichever
    pass reads them. ``keep_bytes=None``: every layer in one pass, all held.

    Args:
        model: the original model (read, never changed).
        layers: ``{path: (layer, scheme)}`` of readable layers, in the order the selection visits them.
        images: the sampled model inputs.
        samples: sampled positions per layer.
        keep_bytes: the most bytes of moments held at once (the layer asked for is always read).
    """

    def __init__(
        self,
        model: keras.Model,
        layers: dict[str, tuple[Any, str]],
        images: np.ndarray,
        samples: int,
        keep_bytes: int | None = None,
    ) -> None:
        if keep_bytes is not None and keep_bytes < 0:
            raise ValueError(f"MomentStore: keep_bytes must be None or >= 0, got {keep_bytes!r}.")
        self.model, self.layers, self.images, self.samples = model, dict(layers), images, int(samples)
        self.keep_bytes = keep_bytes
        self.order = list(self.layers)
        self._calls = call_counts(model)  # the graph is walked once, not on every pass
        self._held: dict[str, Moments] = {}
        #: passes over the original model so far, and the seconds they took
        self.passes = 0
        self.seconds = 0.0

    def size(self, path: str) -> int:
        """Bytes of one layer's moments (its ``width²`` float64 second moment dominates)."""
        width = input_width(self.layers[path][0])
        return 8 * (width + 1) * (width + 2)

    @property
    def held(self) -> list[str]:
        """The layers whose moments are held now."""
        return list(self._held)

    def get(self, path: str) -> Moments:
        """The moments of layer ``path``'s input patches (read with the next layers if not held)."""
        if path not in self.layers:
            raise KeyError(f"MomentStore: no readable candidate layer '{path}'.")
        if path not in self._held:
            self._held.clear()  # let go first: the next pass's moments take their place
            if self.keep_bytes is None:
                fetch = [path, *(p for p in self.order if p != path)]
            else:
                fetch = leading_within(self.order[self.order.index(path) :], self.size, self.keep_bytes)
            moments, _, seconds = selection_moments(
                self.model, {p: self.layers[p] for p in fetch}, self.images, self.samples, calls=self._calls
            )
            self._held.update(moments)
            self.passes += 1
            self.seconds += seconds
        return self._held[path]

    def reader(self, path: str) -> Any:
        """A function giving layer ``path``'s moments (what a :class:`CandidateFit` reads them through)."""
        return lambda: self.get(path)

    def close(self) -> None:
        """Let go of every held moment."""
        self._held.clear()


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
    shared by every rank and every per-layer scheme of ``compress_scheme="auto"``) and the run's fitting clock.

    ``source``: the moments, or a function giving them when they are first needed (:meth:`MomentStore.reader`).
    """

    source: Moments | Callable[[], Moments]
    clock: Clock
    tag: str = ""
    #: the factors of every rank fitted so far (in the layer's dtype; fewer weights than the kernel, or the rank
    #: would not be a candidate): a whole plan scored after the per-layer scores (the two-plan check, the accuracy
    #: target's plans) takes its layers' factors from here instead of building each layer's problem again
    fitted: dict[tuple[str, Any], list[np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def moments(self) -> Moments:
        """The layer's input moments (read now if they are not held)."""
        return self.source if isinstance(self.source, Moments) else self.source()

    def kernel(self, layer: Any, scheme: str, rank: Any, dtype: Any) -> np.ndarray:
        """The original-shaped kernel equivalent to ``layer``'s data-aware factors at ``rank``."""
        start = time.perf_counter()
        key = (scheme, tuple(rank) if isinstance(rank, list | tuple) else int(rank))
        with fitting_threads():
            weights = self.fitted.get(key)
            if weights is None:
                moments = self.moments
                problem = self.clock.problem_for(layer, scheme, moments)
                weights = self.fitted[key] = fit_layer(layer, scheme, rank, moments, problem)[0]
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
        self.store: MomentStore | None = None

    def attach(self, model: keras.Model, candidates: list[Any], stats: Any) -> None:
        """Give each readable candidate its :class:`CandidateFit`, reading its moments from ``model`` (the original)
        when first needed (:class:`MomentStore`, at most :func:`moments_budget` held at once); the others keep
        data-free kernels, with the reason in ``stats.notes``."""
        calls = call_counts(model)
        layers, reasons, fitted = {}, {}, []
        for candidate in candidates:
            candidate.data_tag = self.tag  # the cache tag of every candidate of a data-aware run, fitted or not
            layer = candidate.ref.layer
            why = readable_reason(model, candidate.path, layer, candidate.scheme, calls)
            if why is None:
                layers.setdefault(candidate.path, (layer, candidate.scheme))  # one moment per layer, any scheme
                fitted.append(candidate)
            else:
                reasons[candidate.path] = why
        self.store = MomentStore(model, layers, self.images, self.samples, moments_budget(model))
        for candidate in fitted:
            candidate.data_fit = CandidateFit(self.store.reader(candidate.path), self.clock, self.tag)
        stats.notes.append(
            f"data-aware factors: {len(self.images)} input(s), {self.samples} sampled positions per layer; "
            f"{len(layers)} of {len({c.path for c in candidates})} layer(s) fitted to their inputs"
        )
        for path, why in reasons.items():
            stats.notes.append(f"data-aware factors: layer '{path}' keeps data-free factors: {why}")

    def refit(self, original: keras.Model, compressed: keras.Model, paths: list[str], stats: Any) -> None:
        """Refit ``paths`` of ``compressed`` in forward order (asymmetric); notes and timings into ``stats``."""
        self.clock.problem_key, self.clock.problem = None, None  # the selection's last layer: not needed any more
        if self.store is not None:
            self.store.close()  # the selection's moments: not needed any more either
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
        passes = 0 if self.store is None else self.store.passes
        stats.timings["data_aware_collect_seconds"] = self.collect_seconds + (
            0.0 if self.store is None else self.store.seconds
        )
        if passes > 1:
            stats.notes.append(
                f"data-aware factors: the candidates' input moments were read in {passes} passes over the sample "
                f"inputs (at most {moments_budget(self.store.model) / 2**20:.0f} MiB of them held at once)"
            )
        stats.timings["data_aware_fit_seconds"] = self.clock.seconds
        if self.report and self.report.layers:
            fits = list(self.report.layers.values())
            fitted = float(np.mean([f.relative_error for f in fits]))
            free = float(np.mean([f.data_free_relative_error for f in fits]))
            stats.notes.append(
                f"data-aware factors: final model refitted in forward order ({len(fits)} layer(s)): mean relative "
                f"output error {fitted:.4g} (data-free factors on the same inputs: {free:.4g})"
            )
