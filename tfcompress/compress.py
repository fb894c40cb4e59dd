"""``compress_model``: choose per-layer ranks for a target and return the compressed model with stats.

How a run goes:

1. The user's model is cloned ONCE into a working copy (the user's model is never
   touched, whatever happens: success, a raising callback, Ctrl-C). Meanwhile the
   SVDs of the eligible kernels run on background threads
   (:class:`tfcompress.decompose.BackgroundSVDs`); they are all done before the
   first callback.
2. The baseline score is the callback's score of the working copy.
3. Auto mode, greedy: for every eligible layer and candidate ratio ``i/N`` the
   layer's kernel in the working copy is replaced by its reconstructed low-rank
   kernel ``W_r`` (the decomposed layer computes exactly this function), the
   callback is called, and the kernel is restored. No clone, rebuild, save/reload
   or retrace per candidate; the SVD of each kernel is computed once. Candidates of
   one layer that round to the same rank are evaluated once. The score table then
   goes to :func:`tfcompress.select.greedy_select`.
   Auto mode, TAR: every layer takes, for residual index ``i``, the rank whose
   relative reconstruction residual is closest to ``i/N``; the whole model is
   evaluated at each index that meets the target, and
   :func:`tfcompress.select.tar_select` picks the index.
   Manual mode: the user's ratios are turned into ranks.
4. The plan is applied to the user's model with :func:`tfcompress.rewrite_model`
   (with a ``trainer``, one layer at a time, fine-tuning after each), the
   compressed model is evaluated, and :class:`CompressionStats` reports it all.
   The rewrite takes the SVDs computed during selection
   (:func:`tfcompress.decompose.reuse_svds`) rather than factorising again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from . import decompose, unfoldings
from ._checks import check_finite
from .cost import (
    KIND_CLASSES,
    LayerGeometry,
    UncountedMacsWarning,
    _rank_for_ratio,
    decomposed_cost,
    layer_geometry,
    layer_kind,
    max_rank,
    model_cost,
    original_cost,
    round_rank,
)
from .enums import CompressionScheme, CostMetric, Mode, RankSelectScheme, coerce_enum
from .errors import TargetUnreachableError, unreachable_message
from .graph import LayerRef, check_graph_model, no_candidates_detail, resolve_layers, walk_layers
from .latency import LatencyMeter, LatencyOptions
from .layers.base import check_source_conv, check_source_dense
from .layers.svd_einsum_dense import check_source_einsum_dense
from .outputs import check_writable_file, remove_stale_temp_files
from .params import (
    AutoSchemeParameters,
    ChannelPruningParameters,
    SpatialSvdParameters,
    TuckerParameters,
    WeightSvdParameters,
    _SchemeParameters,
)
from .progress import Progress
from .rewire import replacement_problem
from .rewrite import _source_kernel, rewrite_model
from .select import (
    EvalScoresCacheError,
    ScoreCacheWriter,
    fingerprint_from_entries,
    greedy_select,
    load_eval_scores,
    min_loss_select,
    tar_candidate_ranks,
    tar_indices_to_evaluate,
    tar_select,
)
from .stats import CompressionStats, LayerStats, run_metadata

__all__ = ["compress_model", "ModelCompressor", "ModelChangedError"]

logger = logging.getLogger("tfcompress")

_PARAMS_FOR_SCHEME = {
    CompressionScheme.weight_svd: WeightSvdParameters,
    CompressionScheme.spatial_svd: SpatialSvdParameters,
    CompressionScheme.tucker: TuckerParameters,
    CompressionScheme.auto: AutoSchemeParameters,
    CompressionScheme.channel_pruning: ChannelPruningParameters,
}


# ---------------------------------------------------------------- eval callback


class _Evaluator:
    """Calls the user's callback, checks its result, and times it."""

    def __init__(self, callback: Callable[..., Any], iterations: Any) -> None:
        if not callable(callback):
            raise TypeError(f"eval_callback must be callable as eval_callback(model, iterations), got {callback!r}.")
        self.callback = callback
        self.iterations = iterations
        self.extra_args = self._extra_args(callback)
        self.seconds = 0.0
        self.calls = 0

    @staticmethod
    def _extra_args(callback: Callable[..., Any]) -> tuple:
        """AIMET's callbacks take (model, iterations, use_cuda): pass use_cuda=False to those."""
        try:
            signature = inspect.signature(callback)
        except (TypeError, ValueError):
            return ()
        params = list(signature.parameters.values())
        if any(p.kind is p.VAR_POSITIONAL for p in params):
            return ()
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        required = [p for p in positional if p.default is p.empty]
        if len(required) >= 3:
            return (False,)
        if len(positional) < 2:
            raise TypeError(
                "eval_callback must accept (model, iterations) (or AIMET's (model, iterations, use_cuda)); "
                f"its signature is {signature}."
            )
        return ()

    def __call__(self, model: keras.Model, what: str) -> float:
        start = time.perf_counter()
        try:
            value = self.callback(model, self.iterations, *self.extra_args)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1
        try:
            if isinstance(value, str | bytes | bool | np.bool_):
                raise TypeError(value)
            score = float(np.asarray(value).reshape(()))
        except (TypeError, ValueError):
            raise TypeError(
                f"eval_callback must return a number (higher is better); for {what} it returned {value!r}."
            ) from None
        if not math.isfinite(score):
            raise ValueError(f"eval_callback returned {score} for {what}; scores must be finite numbers.")
        return score


class ModelChangedError(ValueError):
    """The eval callback changed the working copy it was given (trained it, edited a weight, ...).

    Example:
        >>> issubclass(ModelChangedError, ValueError)
        True
    """


class _WorkGuard:
    """A digest of every weight of the working copy, taken before the first evaluation, so that a callback that
    trains or edits the model it is given is caught instead of silently corrupting every later score.

    Each candidate only swaps one kernel in and restores it bit for bit, so between evaluations the weights must be
    exactly the ones taken here. Checking costs one read and hash of the weights (about 0.2 s for ResNet50's 100
    MB); it is done after the baseline (most such callbacks change the model on every call) and after the search.
    """

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self.digests = self._digests()

    def _digests(self) -> list[tuple[str, bytes]]:
        out = []
        for variable in self.model.weights:
            value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
            digest = hashlib.blake2b(value.reshape(-1).view(np.uint8), digest_size=16)  # no copy of the bytes
            digest.update(repr((value.shape, value.dtype.str)).encode())
            out.append((str(getattr(variable, "path", variable.name)), digest.digest()))
        return out

    def check(self, when: str) -> None:
        now = self._digests()
        if [name for name, _ in now] != [name for name, _ in self.digests]:
            changed = ["(weights were added or removed)"]
        else:
            changed = [name for (name, old), (_, new) in zip(self.digests, now, strict=True) if old != new]
        if changed:
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            raise ModelChangedError(
                f"eval_callback changed the model it was given ({when}: {len(changed)} weight(s) differ, {shown}); "
                "every later score would be wrong. The callback must only evaluate the model: no fit/train step, "
                "no assign or set_weights, no training=True call that updates BatchNormalization statistics (copy "
                "the model first if it must change)."
            )


# ---------------------------------------------------------------- per-layer candidates


@dataclass
class _Candidate:
    """One compressible layer: its geometry, its kernel, and its decomposition computed once."""

    ref: LayerRef
    work_layer: Any
    scheme: str  # per-layer scheme: "svd", "weight_svd", "spatial_svd", "tucker"
    geometry: LayerGeometry
    kernel: np.ndarray
    metric: CostMetric
    multiplicity: int
    _svd: decompose.TruncatedSVD | None = field(default=None, repr=False)
    svd_seconds: float = 0.0
    meter: LatencyMeter | None = field(default=None, repr=False)  # set for cost_metric="latency"
    _last: tuple[int, np.ndarray] | None = field(default=None, repr=False)  # the last approximation, see below

    @property
    def path(self) -> str:
        return self.ref.path

    def svd_matrix(self) -> np.ndarray:
        """The matrix whose SVD gives this layer's factors (the kernel, unfolded for its kind and scheme)."""
        return unfoldings.unfold(self.geometry.kind, self.scheme, self.kernel, self.geometry.equation)

    def _factor(self) -> decompose.TruncatedSVD:
        if self._svd is None:
            start = time.perf_counter()
            self._svd = decompose.TruncatedSVD.of(self.svd_matrix())
            self.svd_seconds += time.perf_counter() - start
        return self._svd

    def cost(self, rank: Any) -> float:
        """Cost of the layer at ``rank`` over all its calls (params: once; latency: measured seconds)."""
        if self.metric is CostMetric.latency:
            assert self.meter is not None
            return self.meter.candidate(self.ref.layer, self.scheme, rank) * self.ref.calls
        value = decomposed_cost(self.geometry, self.scheme, rank).metric(self.metric)
        return value * (self.ref.calls if self.metric is CostMetric.mac else 1)

    @property
    def original(self) -> float:
        if self.metric is CostMetric.latency:
            assert self.meter is not None
            return self.meter.layer(self.ref.layer) * self.ref.calls
        value = original_cost(self.geometry).metric(self.metric)
        return value * (self.ref.calls if self.metric is CostMetric.mac else 1)

    @property
    def rank_metric(self) -> CostMetric:
        """The metric ranks are derived from: latency uses the MAC rank ladder (then measures each rank)."""
        return CostMetric.mac if self.metric is CostMetric.latency else self.metric

    def rank_for(self, ratio: float) -> Any:
        return _rank_for_ratio(self.geometry, ratio, self.scheme, self.rank_metric, self.multiplicity)

    def reconstructed(self, rank: Any) -> np.ndarray:
        """The kernel that the decomposed layer at ``rank`` is equivalent to."""
        if self.scheme == "tucker":
            start = time.perf_counter()
            factors = decompose.tucker2_factors(self.kernel, rank, hooi_iterations=2)
            self.svd_seconds += time.perf_counter() - start
            return decompose.tucker2_compose(*factors)
        approximation = self._approximation(int(rank))
        return unfoldings.fold(
            self.geometry.kind, self.scheme, approximation, self.kernel.shape, self.geometry.equation
        )

    def _approximation(self, rank: int) -> np.ndarray:
        """The float32 rank-``rank`` approximation of the unfolded kernel. The last one is kept: a higher rank next
        (candidates go up in rank) only adds the triplets in between, when that is the cheaper product."""
        svd = self._factor()
        last = self._last
        if last is not None and last[0] <= rank and rank - last[0] < min(rank, svd.max_rank - rank):
            approx = svd.extend(last[1], last[0], rank)
        else:
            approx = svd.reconstruct(rank, dtype=np.float32)
        self._last = (rank, approx)
        return approx

    def share_kernel_with_svd(self) -> None:
        """Make ``kernel`` a read-only view of the SVD's own copy of the unfolded kernel (the same values), so the
        run holds one copy of each kernel instead of two."""
        self.share_kernel(None if self._svd is None else self._svd.matrix)

    def share_kernel(self, matrix: np.ndarray | None) -> None:
        """Make ``kernel`` a read-only view of ``matrix``, this layer's unfolded kernel (:meth:`svd_matrix`)."""
        if matrix is None or matrix.dtype != self.kernel.dtype or self.scheme == "tucker":
            return
        view = unfoldings.fold(self.geometry.kind, self.scheme, matrix, self.kernel.shape, self.geometry.equation)
        if view.shape == self.kernel.shape and np.shares_memory(view, matrix):
            view.flags.writeable = False
            self.kernel = view

    def release(self) -> None:
        """Let go of the SVD and the kernel's values once the model is rewritten; ``kernel`` keeps its shape (a
        zero-stride view of one value) for the stats."""
        self._svd = None
        self._last = None
        self.kernel = np.broadcast_to(np.zeros((), dtype=self.kernel.dtype), self.kernel.shape)

    def forget_approximation(self) -> None:
        """Drop the kept approximation (a full-size array) and the SVD's float32 products once the layer's
        candidates are done (a later reconstruction, e.g. of a whole plan, makes them again)."""
        self._last = None
        if self._svd is not None:
            self._svd.__dict__.pop("_float32", None)

    def relative_residuals(self) -> np.ndarray:
        return decompose.relative_residuals(self._factor().s)


def _original_kernels(candidates: list[_Candidate]) -> dict[int, np.ndarray]:
    """``{id(working copy's kernel variable): original value}``, from the candidates' own kernels (equal to the
    working copy's, which is a clone), so restoring a swapped kernel needs no further copy of it."""
    originals = {}
    for candidate in candidates:
        variable = _source_kernel(candidate.work_layer)
        if candidate.kernel.dtype == np.dtype(variable.dtype):
            originals[id(variable)] = candidate.kernel
    return originals


@contextlib.contextmanager
def _kernel_slot(layer: Any, original_kernels: dict[int, np.ndarray]) -> Iterator[Callable[[np.ndarray], None]]:
    """``put(kernel)`` assigns one candidate kernel after another to ``layer``; its original kernel is restored once
    at the end, whatever happens (one assignment per candidate instead of two: no restore between candidates of the
    same layer). ``original_kernels`` (one dict per selection run) keeps each kernel's original value from its first
    use, so it is read from the variable once per layer instead of once per candidate. The variable is the one the
    decomposition factorises (a SeparableConv2D's pointwise kernel; every other layer's ``kernel``)."""
    variable = _source_kernel(layer)
    if id(variable) not in original_kernels:
        original_kernels[id(variable)] = keras.ops.convert_to_numpy(variable)
    changed = False

    def put(kernel: np.ndarray) -> None:
        nonlocal changed
        changed = True
        variable.assign(np.asarray(kernel, dtype=variable.dtype))

    try:
        yield put
    finally:
        if changed:
            variable.assign(original_kernels[id(variable)])


def _ineligibility(layer: Any, scheme: CompressionScheme, manual: bool) -> str | None:
    """Why ``layer`` cannot be compressed with ``scheme`` (None when it can)."""
    kind = layer_kind(layer)
    if kind in ("dense", "einsum_dense"):
        if scheme is CompressionScheme.tucker:
            return "Tucker-2 applies to Conv2D layers only"
        if scheme is CompressionScheme.spatial_svd and not manual:
            return (
                f"{KIND_CLASSES[kind].__name__} layers are decomposed under spatial_svd only when listed in manual mode"
            )
    elif kind in ("conv2d", "conv1d"):
        if scheme is CompressionScheme.tucker and kind == "conv1d":
            return "Tucker-2 applies to Conv2D layers only"
        if scheme in (CompressionScheme.spatial_svd, CompressionScheme.tucker) and set(layer.kernel_size) == {1}:
            size = "x".join("1" * len(layer.kernel_size))
            return f"{size} convolution: {scheme.value} needs a kernel larger than 1 in at least one direction"
    elif kind in ("separable_conv2d", "conv2d_transpose"):
        if scheme in (CompressionScheme.spatial_svd, CompressionScheme.tucker):
            what = "the pointwise kernel of a SeparableConv2D" if kind == "separable_conv2d" else "a Conv2DTranspose"
            return f"{scheme.value} does not apply to {what}; weight_svd does"
    else:
        return (
            f"{type(layer).__name__} is not a Dense, EinsumDense, Conv1D, Conv2D, SeparableConv2D or Conv2DTranspose "
            "layer (the layers that can be decomposed)"
        )
    try:
        if kind == "dense":
            check_source_dense(layer)
        elif kind == "einsum_dense":
            check_source_einsum_dense(layer)
        else:
            check_source_conv(layer, KIND_CLASSES[kind])
    except (TypeError, ValueError) as err:
        return str(err)
    if getattr(layer, "lora_enabled", False):
        return "LoRA is enabled on this layer; merge or disable it before compressing"
    return None


def _layer_scheme(layer: Any, scheme: CompressionScheme) -> str:
    if isinstance(layer, keras.layers.Dense | keras.layers.EinsumDense):
        return "svd"
    if scheme is CompressionScheme.auto:
        return "weight_svd"  # the first variant; compress_scheme="auto" tries the others too (see _auto_variants)
    return scheme.value


def _auto_variants(candidate: _Candidate) -> list[_Candidate]:
    """The per-layer schemes ``compress_scheme="auto"`` compares: SVD for Dense; weight SVD, and for kernels
    larger than 1x1 also spatial SVD and Tucker-2, for Conv2D; weight SVD, and for k > 1 spatial SVD, for Conv1D;
    weight SVD alone for SeparableConv2D and Conv2DTranspose."""
    if candidate.scheme == "svd":
        return [candidate]
    schemes = ["weight_svd"]
    kind = candidate.geometry.kind
    if kind in ("conv2d", "conv1d") and candidate.geometry.kernel_size != (1, 1):
        schemes += ["spatial_svd", "tucker"] if kind == "conv2d" else ["spatial_svd"]
    return [dataclasses.replace(candidate, scheme=s, _svd=None, svd_seconds=0.0, _last=None) for s in schemes]


def _relative_error(candidate: _Candidate, rank: Any) -> float:
    """``||W - W_r|| / ||W||`` of ``candidate``'s kernel at ``rank``."""
    norm = float(np.linalg.norm(candidate.kernel)) or 1.0
    return float(np.linalg.norm(candidate.kernel - candidate.reconstructed(rank))) / norm


# ---------------------------------------------------------------- the fingerprint and the cache


def _model_fingerprint(model: keras.Model) -> str:
    entries = []
    for ref in walk_layers(model):
        weights = [keras.ops.convert_to_numpy(w) for w in ref.layer.weights]
        entries.append((ref.path, type(ref.layer).__name__, weights))
    return fingerprint_from_entries(entries)


def _settings_tag(scheme: CompressionScheme, metric: CostMetric, multiplicity: int) -> str:
    return f"{scheme.value}/{metric.value}/m{multiplicity}"


def _load_cache(path: str, model_digest: str, tag: str) -> dict[str, dict[float, float]] | None:
    """Load the score table; a mismatch is explained as a different model or different settings."""
    try:
        return load_eval_scores(path, f"{model_digest}|{tag}")
    except EvalScoresCacheError as err:
        if "different model" not in str(err):
            raise
        import json

        with open(path, encoding="utf-8") as handle:
            stored = str(json.load(handle).get("model_fingerprint", ""))
        stored_digest, _, stored_tag = stored.partition("|")
        if stored_digest == model_digest and stored_tag != tag:
            raise EvalScoresCacheError(
                f"eval-score cache {path!r} was computed with other settings (scheme/cost metric/multiplicity "
                f"{stored_tag!r}, this run uses {tag!r}); the scores would not match the ranks. Delete the file or pass "
                "another path."
            ) from None
        raise


# ---------------------------------------------------------------- the main job


def _progress(total: int, verbose: int) -> Progress:
    return Progress(total, verbose=1 if verbose else 0, unit="eval")


def _inner_problem(ref: LayerRef) -> str | None:
    """Why a layer held inside a custom layer cannot be replaced in a model that saves (``None`` when it can, and
    for every top-level layer)."""
    if ref.owner is None:
        return None
    problem = replacement_problem(ref.owner, ref.attribute)
    return None if problem is None else f"inside custom layer '{ref.owner.name}': {problem}"


def _resolve_ignored(refs: list[LayerRef], ignored: list[Any]) -> set[int]:
    if not ignored:
        return set()
    resolved = resolve_layers(refs, ignored, what="modules_to_ignore")
    return {id(ref.layer) for ref in resolved.values()}


def compress_model(
    model: keras.Model,
    eval_callback: Callable[..., float],
    eval_iterations: Any,
    compress_scheme: CompressionScheme | str,
    cost_metric: CostMetric | str,
    parameters: WeightSvdParameters | SpatialSvdParameters | TuckerParameters | AutoSchemeParameters,
    trainer: Any = None,
    *,
    verbose: int = 1,
    latency_options: LatencyOptions | None = None,
    allow_uncounted_macs: bool = False,
) -> tuple[keras.Model, CompressionStats]:
    """Compress ``model`` to a target cost ratio, choosing each layer's rank to lose as little score as possible.

    Args:
        model: a trained, built Sequential or Functional Keras model. Never modified.
        eval_callback: ``eval_callback(model, iterations) -> float``, higher is better
            (AIMET's ``(model, iterations, use_cuda)`` form works too). It must only evaluate the model it is
            given (a working copy whose kernels are swapped in place): training it, assigning weights or calling
            it with ``training=True`` (which updates BatchNormalization statistics) would corrupt every later
            score, so a digest of the copy's weights is checked after the baseline and after the search, and a
            change raises :class:`ModelChangedError`.
        eval_iterations: passed to ``eval_callback`` untouched.
        compress_scheme: ``weight_svd`` (Conv2D, Conv1D, Conv2DTranspose, SeparableConv2D's pointwise kernel
            and Dense), ``spatial_svd`` (Conv2D and Conv1D with a kernel larger than 1x1; Dense layers too when
            listed in manual mode) or
            ``tucker`` (Tucker-2 of Conv2D layers), or ``auto``: per layer and candidate ratio the best of
            weight SVD, spatial SVD and Tucker-2 (Dense: SVD), so one model can mix schemes
            (with :class:`tfcompress.params.AutoSchemeParameters`; greedy or manual mode).
        cost_metric: ``mac``, ``memory`` or ``latency``; ratios are compressed / original cost of the
            whole model. ``latency`` measures each layer, candidate and the whole model (see
            :mod:`tfcompress.latency`); the ranks tried are the same as for ``mac``.
        parameters: ``WeightSvdParameters`` / ``SpatialSvdParameters`` / ``TuckerParameters``
            in ``Mode.auto`` (greedy or TAR) or ``Mode.manual``.
        trainer: optional object with ``train_model(model, layer, train_flag=True)``, called after
            each layer is compressed (see :class:`tfcompress.FitTrainer`).
        verbose: 1 shows a progress bar over the evaluations; 0 is silent.
        latency_options: :class:`tfcompress.latency.LatencyOptions` (runtime, batch size,
            repeats, warm-up, cache file) for ``cost_metric="latency"``; defaults otherwise.
        allow_uncounted_macs: with ``cost_metric="mac"``, a model holding layers whose MACs are not known
            (``tfc.model_cost(model).uncounted``: custom layers with weights of their own, ...) is refused, since
            its MAC ratio would be computed over an undercount. ``True`` proceeds: targets and ratios then cover
            the counted layers only, and ``stats.uncounted_layers`` names the others.

    Returns:
        ``(compressed_model, stats)``.

    Example:
        >>> import numpy as np, keras, tfcompress as tfc
        >>> model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(16, 3, name="c1"),
        ...     keras.layers.Conv2D(16, 3, name="c2"), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(8, 12, 12, 3)).astype("float32")
        >>> reference = model.predict(x, verbose=0)
        >>> def score(m, iterations):   # agreement with the original outputs
        ...     return -float(np.mean((m.predict(x, verbose=0) - reference) ** 2))
        >>> params = tfc.SpatialSvdParameters(tfc.Mode.auto,
        ...     tfc.SpatialSvdParameters.AutoModeParams(tfc.GreedySelectionParameters(target_comp_ratio=0.6)))
        >>> small, stats = tfc.compress_model(model, score, None, "spatial_svd", "mac", params, verbose=0)
        >>> stats.mac_compression_ratio <= 0.61
        True
    """
    start_time = time.perf_counter()
    check_graph_model(model)
    scheme = coerce_enum(compress_scheme, CompressionScheme, "compress_scheme")
    metric = coerce_enum(cost_metric, CostMetric, "cost_metric")
    if latency_options is not None and not isinstance(latency_options, LatencyOptions):
        raise TypeError(f"`latency_options` must be LatencyOptions(...) or None, got {type(latency_options).__name__}.")
    meter = LatencyMeter(latency_options) if metric is CostMetric.latency else None
    expected = _PARAMS_FOR_SCHEME[scheme]
    if not isinstance(parameters, _SchemeParameters):
        raise TypeError(
            f"`parameters` must be {expected.__name__}(mode, params, multiplicity), got {type(parameters).__name__}."
        )
    if not isinstance(parameters, expected):
        raise TypeError(
            f"compress_scheme={scheme.value!r} needs {expected.__name__}, got {type(parameters).__name__}; "
            "the parameters class must match the scheme."
        )
    if trainer is not None and not callable(getattr(trainer, "train_model", None)):
        raise TypeError("`trainer` must have a method train_model(model, layer, train_flag=True), or be None.")
    evaluator = _Evaluator(eval_callback, eval_iterations)
    manual = parameters.mode is Mode.manual
    multiplicity = parameters.multiplicity

    stats = CompressionStats(
        compress_scheme=scheme.value,
        cost_metric=metric.value,
        mode=parameters.mode.value,
        **run_metadata(model, eval_callback),
    )
    original = model_cost(model, warn=False)
    if original.uncounted:
        if metric is CostMetric.mac and not allow_uncounted_macs:
            raise ValueError(
                f"compress_model: {original.uncounted_message()}, so a MAC ratio of '{model.name}' cannot be "
                "computed honestly; use cost_metric='memory' (parameters are always counted), or pass "
                "allow_uncounted_macs=True to target the counted layers' MACs only."
            )
        warnings.warn(f"compress_model: {original.uncounted_message()}.", UncountedMacsWarning, stacklevel=2)
        stats.uncounted_layers = dict(original.uncounted)
    stats.original_macs, stats.original_params = original.macs, original.params
    total_cost = original.metric(metric) if meter is None else 0.0  # latency: set once the candidates are known

    if scheme is CompressionScheme.channel_pruning:
        from .pruning.driver import compress_channels

        work = _working_copy(model, stats)
        compressed = compress_channels(model, work, parameters, metric, evaluator, stats, trainer, verbose)
        del work
        return compressed, _finish(stats, evaluator, compressed, original, start_time, svd_seconds=0.0)
    refs = walk_layers(model, sublayers=True)  # layers inside custom layers too ("block/ffn")

    def make_candidate(ref: LayerRef) -> _Candidate:
        layer = ref.layer
        kernel = np.asarray(keras.ops.convert_to_numpy(_source_kernel(layer)))  # its own dtype: no float64 copy
        if not np.issubdtype(kernel.dtype, np.floating) or kernel.dtype.itemsize < 4:
            kernel = kernel.astype(np.float32)
        check_finite(  # before any factorisation: LAPACK spins for ever on an infinity
            kernel,
            f"compress_model: the kernel of layer '{ref.path}'",
            "it cannot be decomposed: fix the weights, or leave the layer out (modules_to_ignore)",
        )
        return _Candidate(
            ref=ref,
            work_layer=None,  # bound once the working copy exists
            scheme=_layer_scheme(layer, scheme),
            geometry=layer_geometry(layer, input_shape=ref.input_shape),
            kernel=kernel,
            metric=metric,
            multiplicity=multiplicity,
            meter=meter,
        )

    # ---- which layers, at which ratios
    candidates: list[_Candidate] = []
    manual_ratios: dict[str, float] = {}
    if manual:
        pairs = parameters.params.list_of_module_comp_ratio_pairs
        resolved = resolve_layers(refs, [layer for layer, _ in pairs], what="ManualModeParams")
        problems = []
        for layer_key, ratio in pairs:
            ref = resolved[layer_key]
            why = _ineligibility(ref.layer, scheme, manual=True) or _inner_problem(ref)
            if why:
                problems.append(f"'{ref.path}': {why}")
                continue
            if ref.path in manual_ratios:
                problems.append(f"'{ref.path}': listed twice")
                continue
            manual_ratios[ref.path] = ratio
            candidates.append(make_candidate(ref))
        if problems:
            raise ValueError("ManualModeParams cannot be applied: " + "; ".join(problems) + ".")
    else:
        auto = parameters.params
        ignored = _resolve_ignored(refs, auto.modules_to_ignore)
        stats.rank_select_scheme = auto.rank_select_scheme.value
        stats.target_comp_ratio = auto.target_comp_ratio
        for ref in refs:
            if layer_kind(ref.layer) is None:
                continue
            if id(ref.layer) in ignored:
                stats.skipped_layers[ref.path] = "in modules_to_ignore"
                continue
            why = _ineligibility(ref.layer, scheme, manual=False) or _inner_problem(ref)
            if why:
                stats.skipped_layers[ref.path] = why
                continue
            candidate = make_candidate(ref)
            smallest_rank = 1 if candidate.scheme != "tucker" else (1, 1)
            smallest = decomposed_cost(candidate.geometry, candidate.scheme, smallest_rank).metric(
                candidate.rank_metric
            )
            if smallest >= original_cost(candidate.geometry).metric(candidate.rank_metric):
                stats.skipped_layers[ref.path] = "even rank 1 costs as much as the original layer"
                continue
            candidates.append(candidate)
        if not candidates:
            raise ValueError(
                f"compress_model: no layer of '{model.name}' can be compressed with {scheme.value}: "
                + no_candidates_detail(model, stats.skipped_layers)
            )

    # ---- a score cache that cannot be used is an error before any (possibly slow) evaluation
    if not manual and parameters.params.rank_select_scheme is RankSelectScheme.greedy:
        cache = parameters.params.select_params.saved_eval_scores_dict
        if cache is not None:
            _open_cache(model, os.fspath(cache), _settings_tag(scheme, metric, multiplicity))

    if meter is not None:
        total_cost = _latency_total(model, candidates, meter, stats)

    # ---- inside reuse_svds() the final rewrite's decomposed layers take the SVDs computed for the selection (equal
    # matrices, so the very same factors) instead of factorising again
    with decompose.reuse_svds():
        # one working copy for every candidate evaluation; the SVDs run on background threads meanwhile (LAPACK
        # releases the GIL; cloning is mostly Python) and are all done before the first callback, so they never
        # compete with it for the CPU
        factored = [c for c in candidates if c.scheme != "tucker"]
        others = []  # compress_scheme="auto" also tries other per-layer schemes: their SVDs go into the memo too
        if scheme is CompressionScheme.auto:
            others = [v for c in candidates for v in _auto_variants(c) if v.scheme not in ("tucker", c.scheme)]
        matrices = []
        for i, c in enumerate(factored + others):  # one copy of each kernel: it becomes a view of its unfolding
            matrices.append(c.svd_matrix())
            if i < len(factored):
                c.share_kernel(matrices[-1])
        background_svds = decompose.BackgroundSVDs(  # the unfolded kernels are new arrays: no second copy needed
            matrices,
            names=[f"layer '{c.path}'" for c in factored + others],
            copy=False,
        )
        with background_svds as background:
            work = _working_copy(model, stats)
            work_by_path = {ref.path: ref.layer for ref in walk_layers(work, sublayers=True)}
            for candidate in candidates:
                candidate.work_layer = work_by_path[candidate.path]
            wait_start = time.perf_counter()
            svds = background.wait()
        svd_wait_seconds = time.perf_counter() - wait_start  # what the SVDs added beyond the working copy
        for candidate, svd in zip(factored, svds[: len(factored)], strict=True):
            candidate._svd = svd
            candidate.share_kernel_with_svd()
        stats.timings["svd_compute_seconds"] = background.compute_seconds
        del background_svds, background, svds, matrices  # from here on the candidates (and the memo) hold them

        # ---- baseline
        guard = _WorkGuard(work)
        logger.info("evaluating the baseline model")
        stats.baseline_model_accuracy = evaluator(work, "the baseline model")
        guard.check("when the baseline was evaluated")

        # ---- choose ranks, then apply the plan
        plan: dict[str, Any] = {}
        chosen_ratio: dict[str, float] = {}
        if scheme is CompressionScheme.auto:
            plan, chosen_ratio, candidates = _auto_scheme(
                work, candidates, parameters, manual_ratios, evaluator, stats, total_cost, verbose
            )
        elif manual:
            for candidate in candidates:
                ratio = manual_ratios[candidate.path]
                plan[candidate.path] = candidate.rank_for(ratio)
                chosen_ratio[candidate.path] = ratio
        elif parameters.params.rank_select_scheme is RankSelectScheme.greedy:
            plan, chosen_ratio = _greedy(model, work, candidates, parameters, evaluator, stats, total_cost, verbose)
        else:
            plan, chosen_ratio = _tar(work, candidates, parameters, evaluator, stats, total_cost, verbose)

        for candidate in candidates:
            candidate.forget_approximation()  # (TAR and the two-plan check may have kept one per layer)
        guard.check("during the search")
        del guard

        # apply the plan to the user's model
        rewrite_start = time.perf_counter()
        trainer_seconds = 0.0
        by_path = {c.path: c for c in candidates}
        forward = [c.path for c in candidates if c.path in plan]
        if trainer is None:
            compressed = rewrite_model(model, {p: (by_path[p].scheme, plan[p]) for p in forward})
        else:
            compressed = model
            for path in forward:
                compressed = rewrite_model(compressed, {path: (by_path[path].scheme, plan[path])})
                target_layer = {r.path: r.layer for r in walk_layers(compressed, sublayers=True)}[path]
                logger.info("fine-tuning after compressing %s", path)
                train_start = time.perf_counter()
                trainer.train_model(compressed, target_layer, train_flag=True)
                trainer_seconds += time.perf_counter() - train_start
            if not forward:
                compressed = rewrite_model(model, {})
        stats.timings["final_rewrite_seconds"] = time.perf_counter() - rewrite_start - trainer_seconds
        if trainer is not None:
            stats.timings["trainer_seconds"] = trainer_seconds
    del work
    for candidate in candidates:
        candidate.release()  # the SVDs and kernels are not needed for the final numbers

    # ---- final numbers
    for path in forward:
        candidate = by_path[path]
        rank = plan[path]
        before, after = original_cost(candidate.geometry), decomposed_cost(candidate.geometry, candidate.scheme, rank)
        calls = candidate.ref.calls
        stats.per_layer_stats.append(
            LayerStats(
                name=path,
                scheme=candidate.scheme,
                original_shape=list(candidate.kernel.shape),
                rank=list(rank) if isinstance(rank, tuple) else int(rank),
                ratio=float(chosen_ratio[path]),
                macs_before=before.macs * calls,
                macs_after=after.macs * calls,
                params_before=before.params,
                params_after=after.params,
            )
        )
    if meter is not None:
        predicted = total_cost - sum(by_path[p].original - by_path[p].cost(plan[p]) for p in forward)
        stats.timings["latency_compressed_predicted_seconds"] = predicted
        stats.timings["latency_compressed_measured_seconds"] = meter.model(compressed)
        stats.timings["latency_measurement_seconds"] = meter.seconds
        stats.timings["latency_measurements"] = float(meter.timings)
    return compressed, _finish(
        stats,
        evaluator,
        compressed,
        original,
        start_time,
        svd_seconds=svd_wait_seconds + sum(c.svd_seconds for c in candidates),
    )


def _working_copy(model: keras.Model, stats: CompressionStats) -> keras.Model:
    """The clone whose kernels the selection swaps in place (timed as ``working_copy_seconds``)."""
    logger.info(
        "making one working copy of %s (%d layers) for the candidate evaluations", model.name, len(model.layers)
    )
    start = time.perf_counter()
    work = rewrite_model(model, {})
    stats.timings["working_copy_seconds"] = time.perf_counter() - start
    return work


def _finish(
    stats: CompressionStats,
    evaluator: _Evaluator,
    compressed: keras.Model,
    original: Any,
    start_time: float,
    svd_seconds: float,
) -> CompressionStats:
    """Evaluate the compressed model and fill in the whole-model numbers and timings."""
    stats.compressed_model_accuracy = evaluator(compressed, "the compressed model")
    final = model_cost(compressed, warn=False)
    stats.compressed_macs, stats.compressed_params = final.macs, final.params
    stats.mac_compression_ratio = final.macs / original.macs if original.macs else 1.0
    stats.memory_compression_ratio = final.params / original.params if original.params else 1.0
    total = time.perf_counter() - start_time
    trainer_seconds = stats.timings.get("trainer_seconds", 0.0)  # the user's fine-tuning is not toolkit overhead
    stats.timings.update(
        {
            "total_seconds": total,
            "eval_callback_seconds": evaluator.seconds,
            "overhead_seconds": max(total - evaluator.seconds - trainer_seconds, 0.0),
            "svd_seconds": svd_seconds,
        }
    )
    stats.num_eval_calls = evaluator.calls
    stats.put_in_model_order(original.layers)  # layers as they come in the model, whatever step recorded them
    logger.info(
        "compressed %s: MAC ratio %.4f, memory ratio %.4f, score %.4f -> %.4f",
        compressed.name,
        stats.mac_compression_ratio,
        stats.memory_compression_ratio,
        stats.baseline_model_accuracy,
        stats.compressed_model_accuracy,
    )
    return stats


def _open_cache(model: keras.Model, cache_path: str, tag: str) -> tuple[str, dict[str, dict[float, float]]]:
    """Fingerprint the model and read the score table (empty when the file does not exist yet).

    Before any evaluation: the path must be a file that can be written (a probe file is created in its folder), and
    temporary files that a killed run left beside it are removed."""
    folder = os.path.dirname(os.path.abspath(cache_path))
    if not os.path.isdir(folder):
        raise ValueError(f"saved_eval_scores_dict: the folder {folder!r} does not exist; create it first.")
    remove_stale_temp_files(folder, [os.path.basename(cache_path)])
    check_writable_file(cache_path, "saved_eval_scores_dict")
    digest = _model_fingerprint(model)
    return digest, _load_cache(cache_path, digest, tag) or {}


@contextlib.contextmanager
def _scores_kept(
    writer: ScoreCacheWriter | None, table: dict[str, dict[float, float]], stats: CompressionStats
) -> Iterator[None]:
    """Around the evaluations that fill ``table``: at the end, also by an error or Ctrl-C, the scores computed so
    far (a stopped layer's too) are written to the cache, or where :class:`ScoreCacheWriter` can put them, and a
    note says where they went when that was not the cache."""
    try:
        yield
    finally:
        if writer is not None:
            writer.close(table)
            if writer.message:
                stats.notes.append(writer.message)


def _nothing_saves_message(stats: CompressionStats) -> str:
    """The error when no candidate of any layer is cheaper than its layer, with what to try for the cost metric."""
    message = "compress_model: no candidate ratio of any layer saves cost; nothing to select."
    if stats.cost_metric == CostMetric.latency.value:
        message += (
            " With cost_metric='latency' every candidate measured slower than its original layer (small layers at"
            " small inputs or batch sizes often are); try cost_metric='mac', larger inputs or batch_size, or more"
            " LatencyOptions.repeats if the machine is busy."
        )
    return message


def _greedy(
    model: keras.Model,
    work: keras.Model,
    candidates: list[_Candidate],
    parameters: Any,
    evaluator: _Evaluator,
    stats: CompressionStats,
    total_cost: float,
    verbose: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    select_params = parameters.params.select_params
    ratios = select_params.candidates
    # ranks and costs per candidate ratio; candidates that save nothing are dropped
    ranks: dict[str, dict[float, Any]] = {}
    costs: dict[str, dict[float, float]] = {}
    for candidate in candidates:
        ranks[candidate.path], costs[candidate.path] = {}, {}
        for ratio in ratios:
            rank = candidate.rank_for(ratio)
            cost = candidate.cost(rank)
            if cost < candidate.original:
                ranks[candidate.path][ratio] = rank
                costs[candidate.path][ratio] = float(cost)

    path = select_params.saved_eval_scores_dict
    cache_path = None if path is None else os.fspath(path)
    scheme = CompressionScheme(stats.compress_scheme)
    tag = _settings_tag(scheme, CostMetric(stats.cost_metric), parameters.multiplicity)
    digest, table = _open_cache(model, cache_path, tag) if cache_path is not None else (None, {})
    if table:
        logger.info("read eval scores of %d layer(s) from %s", len(table), cache_path)

    # what still needs evaluating: one evaluation per distinct rank of a layer
    todo: dict[str, dict[Any, list[float]]] = {}
    for candidate in candidates:
        known = table.get(candidate.path, {})
        for ratio, rank in ranks[candidate.path].items():
            if not any(math.isclose(ratio, r, rel_tol=1e-6) for r in known):
                todo.setdefault(candidate.path, {}).setdefault(_rank_key(rank), []).append(ratio)
    total_evals = sum(len(v) for v in todo.values())
    logger.info("greedy selection: %d layer(s), %d candidate evaluation(s)", len(candidates), total_evals)
    progbar = _progress(total_evals, verbose)
    original_kernels = _original_kernels(candidates)  # what each swapped kernel of the working copy is restored to
    done = 0
    writer = ScoreCacheWriter(cache_path, f"{digest}|{tag}") if cache_path is not None else None
    with _scores_kept(writer, table, stats):
        for candidate in candidates:
            pending = todo.get(candidate.path)
            if not pending:
                continue
            row = table[candidate.path] = dict(table.get(candidate.path, {}))  # a stop mid-layer keeps its scores
            with _kernel_slot(candidate.work_layer, original_kernels) as put:
                for ratio_list in pending.values():
                    rank = ranks[candidate.path][ratio_list[0]]
                    put(candidate.reconstructed(rank))
                    score = evaluator(work, f"layer '{candidate.path}' at rank {rank}")
                    for ratio in ratio_list:
                        row[ratio] = score
                    done += 1
                    progbar.update(done, values=[("score", score)])
            candidate.forget_approximation()
            if writer is not None:
                writer.save(table)

    scores = {
        c.path: {ratio: _lookup(table[c.path], ratio) for ratio in ranks[c.path]} for c in candidates if ranks[c.path]
    }
    stats.eval_scores = {c.path: dict(sorted(table.get(c.path, {}).items())) for c in candidates}
    if not scores:
        raise ValueError(_nothing_saves_message(stats))
    scored_costs = {p: costs[p] for p in scores}
    originals = {c.path: float(c.original) for c in candidates if c.path in scores}
    selection = _select_greedy(scores, scored_costs, originals, total_cost, select_params, stats)
    by_path = {c.path: c for c in candidates}
    plan, chosen, ratio, note = _filled_plan(
        selection, scores, ranks, by_path, candidates, stats, select_params, total_cost
    )
    stats.selected_comp_ratio = ratio
    if note:
        stats.notes.append(note)
    if select_params.compare_plans and selection.reached and plan:
        alternative = min_loss_select(
            scores,
            scored_costs,
            originals,
            float(total_cost),
            select_params.target_comp_ratio,
            reference_score=stats.baseline_model_accuracy,
            use_monotonic_fit=select_params.use_monotonic_fit,
        )
        if alternative.reached:
            alt = _filled_plan(alternative, scores, ranks, by_path, candidates, stats, select_params, total_cost)
            plan, chosen = _compare_plans((plan, chosen, ratio), alt[:3], work, by_path, evaluator, stats)
    for candidate in candidates:
        if candidate.path not in plan:
            stats.skipped_layers.setdefault(candidate.path, "kept at full size by the selection")
    return plan, chosen


def _filled_plan(
    selection: Any,
    scores: dict[str, dict[float, float]],
    ranks: dict[str, dict[float, Any]],
    by_path: dict[str, _Candidate],
    candidates: list[_Candidate],
    stats: CompressionStats,
    select_params: Any,
    total_cost: float,
) -> tuple[dict[str, Any], dict[str, float], float, str | None]:
    """Ranks of a selection's chosen candidates, with the budget left up to the target spent on higher ranks.

    Returns the plan (path -> rank), each layer's achieved cost ratio, the plan's model ratio, and a note when the
    budget fill moved it.
    """
    plan: dict[str, Any] = {}
    chosen: dict[str, float] = {}
    for path, ratio in selection.ratios.items():
        if ratio < 1.0:
            plan[path] = ranks[path][_match(ranks[path], ratio)]
            chosen[path] = ratio
    note = None
    ratio = selection.model_ratio
    if selection.reached and plan and CostMetric(stats.cost_metric) is not CostMetric.latency:
        loss = {p: stats.baseline_model_accuracy - _lookup(scores[p], chosen[p]) for p in plan}
        caps = {}
        for p in plan:
            higher = sorted(r for r in ranks[p] if r > chosen[p] + 1e-9)
            caps[p] = ranks[p][higher[0]] if higher else None
        before = selection.model_ratio
        plan = _fill_budget(plan, by_path, loss, caps, select_params.target_comp_ratio * total_cost, total_cost)
        after = ratio = _plan_ratio(plan, candidates, total_cost)
        if after > before + 1e-12:
            note = (
                f"greedy selection gave ratio {before:.4f}; the budget left up to the target was spent on higher ranks "
                f"(most score-sensitive layers first), giving {after:.4f}"
            )
        chosen = {p: by_path[p].cost(r) / by_path[p].original for p, r in plan.items()}
    return plan, chosen, ratio, note


def _compare_plans(
    threshold: tuple[dict[str, Any], dict[str, float], float],
    alternative: tuple[dict[str, Any], dict[str, float], float],
    work: keras.Model,
    by_path: dict[str, _Candidate],
    evaluator: _Evaluator,
    stats: CompressionStats,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Evaluate the threshold plan and the least-summed-loss plan on the whole model; keep the better one.

    Each plan is ``(path -> rank, path -> cost ratio, model ratio)``. The threshold search keeps every layer's own
    score above one level, which bounds the worst layer but lets small losses pile up across many layers;
    :func:`~tfcompress.select.knapsack.min_loss_select` minimises their sum instead. Which is better for the combined
    model is an empirical question, so both are scored (all their kernels swapped into the working copy at once, no
    rebuild): two more evaluations, none when the two plans agree. Ties keep the threshold plan.
    """
    plan, chosen, ratio = threshold
    alt_plan, alt_chosen, alt_ratio = alternative
    if not alt_plan or {p: _rank_key(r) for p, r in alt_plan.items()} == {p: _rank_key(r) for p, r in plan.items()}:
        return plan, chosen
    originals = _original_kernels(list(by_path.values()))
    paths = list(dict.fromkeys([*plan, *alt_plan]))
    with contextlib.ExitStack() as stack:  # every kernel is restored at the end, whatever happens
        put = {p: stack.enter_context(_kernel_slot(by_path[p].work_layer, originals)) for p in paths}
        for path, rank in plan.items():
            put[path](by_path[path].reconstructed(rank))
            by_path[path].forget_approximation()  # in the variable now: one layer's arrays at a time
        threshold_score = evaluator(work, "the threshold plan")
        # from the threshold plan to the other: only the layers whose kernel differs are assigned again
        for path in paths:
            if path in alt_plan and (path not in plan or _rank_key(alt_plan[path]) != _rank_key(plan[path])):
                put[path](by_path[path].reconstructed(alt_plan[path]))
                by_path[path].forget_approximation()
            elif path not in alt_plan:
                put[path](originals[id(_source_kernel(by_path[path].work_layer))])
        alt_score = evaluator(work, "the least-summed-loss plan")
    if _keep_alternative(stats, (threshold_score, ratio), (alt_score, alt_ratio), "layer"):
        return alt_plan, alt_chosen
    return plan, chosen


def _keep_alternative(
    stats: CompressionStats, threshold: tuple[float, float], alternative: tuple[float, float], unit: str
) -> bool:
    """The decision of the two-plan check from each plan's ``(score, model ratio)``: the least-summed-loss plan
    only if it scores strictly higher (ties keep the threshold plan). Records both scores, a note, and the kept
    plan's ratio in ``stats``."""
    keep_alt = alternative[0] > threshold[0]
    stats.plan_scores = {"threshold": threshold[0], "min_summed_loss": alternative[0]}
    stats.notes.append(
        f"whole-model check of two plans: score threshold {threshold[0]:.4f} (ratio {threshold[1]:.4f}), least "
        f"summed per-{unit} loss {alternative[0]:.4f} (ratio {alternative[1]:.4f}); kept the "
        + ("least-summed-loss plan" if keep_alt else "threshold plan")
    )
    if keep_alt:
        stats.selected_comp_ratio = alternative[1]
    return keep_alt


def _auto_scheme(
    work: keras.Model,
    candidates: list[_Candidate],
    parameters: AutoSchemeParameters,
    manual_ratios: dict[str, float],
    evaluator: _Evaluator,
    stats: CompressionStats,
    total_cost: float,
    verbose: int,
) -> tuple[dict[str, Any], dict[str, float], list[_Candidate]]:
    """``compress_scheme="auto"``: per layer and candidate ratio keep the best-scoring variant, then select.

    Every variant (see :func:`_auto_variants`) of a layer is scored at the rank its scheme gives for the ratio,
    by the eval callback on the working copy (kernel swapped in place), or with ``data_free`` by minus its
    relative reconstruction error. Variants that save no cost are skipped. Auto mode then runs the greedy
    selection on the table of best scores with the costs of the winning variants; manual mode takes the best
    variant at the user's ratio. Returns the plan, the chosen ratios, and the candidates with their chosen scheme.
    """
    if parameters.mode is Mode.auto and parameters.params.rank_select_scheme is not RankSelectScheme.greedy:
        raise ValueError("compress_scheme='auto' supports greedy selection and manual mode only, not TAR.")
    if parameters.mode is Mode.auto and parameters.params.select_params.saved_eval_scores_dict is not None:
        stats.notes.append("saved_eval_scores_dict is not used with compress_scheme='auto'")
    data_free = parameters.data_free
    if parameters.mode is Mode.manual:
        ratios_of = {c.path: [manual_ratios[c.path]] for c in candidates}
    else:
        ratios_of = {c.path: list(parameters.params.select_params.candidates) for c in candidates}
    total_evals = 0 if data_free else sum(len(ratios_of[c.path]) * len(_auto_variants(c)) for c in candidates)
    progbar = _progress(total_evals, verbose)
    original_kernels = _original_kernels(candidates)  # what each swapped kernel of the working copy is restored to
    done = 0
    best: dict[str, dict[float, tuple[float, _Candidate, Any]]] = {}
    for candidate in candidates:
        variants = _auto_variants(candidate)
        row: dict[float, tuple[float, _Candidate, Any]] = {}
        seen: dict[tuple[str, Any], float] = {}
        with _kernel_slot(candidate.work_layer, original_kernels) as put:  # every variant is this one layer
            for ratio in ratios_of[candidate.path]:
                for variant in variants:
                    rank = variant.rank_for(ratio)
                    if variant.cost(rank) >= variant.original:
                        continue
                    key = (variant.scheme, _rank_key(rank))
                    if key not in seen:
                        if data_free:
                            seen[key] = -_relative_error(variant, rank)
                        else:
                            put(variant.reconstructed(rank))
                            seen[key] = evaluator(work, f"layer '{variant.path}' with {variant.scheme} at rank {rank}")
                            done += 1
                            progbar.update(done, values=[("score", seen[key])])
                    score = seen[key]
                    if ratio not in row or score > row[ratio][0]:
                        row[ratio] = (score, variant, rank)
        winners = {id(v[1]) for v in row.values()}
        for variant in variants:
            variant.forget_approximation()
            if id(variant) not in winners and variant._svd is not None:  # never chosen: its SVD is not needed again
                decompose.forget_svd(variant._svd)
                if candidate._svd is variant._svd:
                    candidate._svd = None
                variant._svd = None
        if row:
            best[candidate.path] = row
        else:
            stats.skipped_layers.setdefault(candidate.path, "no variant saves cost at any candidate ratio")
        stats.eval_scores[candidate.path] = {r: v[0] for r, v in sorted(row.items())}
    if not best:
        raise ValueError(_nothing_saves_message(stats))
    if parameters.mode is Mode.manual:
        chosen = {p: next(iter(row)) for p, row in best.items()}
    else:
        select_params = parameters.params.select_params
        selection = _select_greedy(
            {p: {r: v[0] for r, v in row.items()} for p, row in best.items()},
            {p: {r: float(v[1].cost(v[2])) for r, v in row.items()} for p, row in best.items()},
            {c.path: float(c.original) for c in candidates if c.path in best},
            total_cost,
            select_params,
            stats,
        )
        chosen = {p: _match(best[p], r) for p, r in selection.ratios.items() if r < 1.0}
    plan = {p: best[p][r][2] for p, r in chosen.items()}
    winners = {p: best[p][r][1] for p, r in chosen.items()}
    for candidate in candidates:
        if candidate.path not in plan:
            stats.skipped_layers.setdefault(candidate.path, "kept at full size by the selection")
    schemes = sorted({v.scheme for v in winners.values()})
    stats.notes.append(f"compress_scheme='auto' chose {', '.join(schemes) or 'nothing'}")
    return plan, dict(chosen), [winners.get(c.path, c) for c in candidates]


def _latency_total(
    model: keras.Model, candidates: list[_Candidate], meter: LatencyMeter, stats: CompressionStats
) -> float:
    """Whole-model latency for the selector: compressible layers measured one by one, plus the remainder.

    The remainder is the whole model measured once minus the sum of the measured
    compressible layers, clamped at 0 (so the total is the larger of the two). The
    numbers go into ``stats.timings`` (``latency_*`` keys, seconds per inference).
    """
    layers = sum(c.original for c in candidates)
    whole = meter.model(model)
    remainder = max(whole - layers, 0.0)
    stats.timings["latency_original_measured_seconds"] = whole
    stats.timings["latency_original_predicted_seconds"] = layers + remainder
    stats.timings["latency_compressible_layers_seconds"] = layers
    stats.timings["latency_remainder_seconds"] = remainder
    return layers + remainder


def _select_greedy(
    scores: dict[str, dict[float, float]],
    costs: dict[str, dict[float, float]],
    originals: dict[str, float],
    total_cost: float,
    select_params: Any,
    stats: CompressionStats,
) -> Any:
    """Run :func:`greedy_select`, re-raise its warnings as compress_model's and record the outcome in ``stats``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        selection = greedy_select(
            scores,
            costs,
            originals,
            float(total_cost),
            select_params.target_comp_ratio,
            use_monotonic_fit=select_params.use_monotonic_fit,
        )
    if not selection.reached and not select_params.allow_unreachable:
        raise TargetUnreachableError(
            unreachable_message(
                "compress_model",
                select_params.target_comp_ratio,
                selection.model_ratio,
                select_params.saved_eval_scores_dict,
                "every eligible layer at its smallest candidate ratio",
            ),
            target_ratio=select_params.target_comp_ratio,
            best_ratio=selection.model_ratio,
            eval_scores=stats.eval_scores or scores,
            cache_path=select_params.saved_eval_scores_dict,
        )
    for warning in caught:
        warnings.warn(f"compress_model: {warning.message}", UserWarning, stacklevel=4)
    if not selection.reached:
        stats.notes.append(selection.message)
    stats.selected_comp_ratio = selection.model_ratio
    return selection


def _plan_ratio(plan: dict[str, Any], candidates: list[_Candidate], total_cost: float) -> float:
    """Whole-model cost ratio when the layers of ``plan`` are at their ranks."""
    saved = sum(c.original - c.cost(plan[c.path]) for c in candidates if c.path in plan)
    return (total_cost - saved) / total_cost


def _fill_budget(
    plan: dict[str, Any],
    by_path: dict[str, _Candidate],
    loss: dict[str, float],
    caps: dict[str, Any],
    budget_cost: float,
    total_cost: float,
) -> dict[str, Any]:
    """Spend the cost left between the selected plan and the target on higher ranks.

    The greedy threshold search moves in steps of whole candidates, so its plan can
    land well below the target. A higher rank never makes a truncated SVD worse, so
    the leftover budget is given, ``multiplicity`` ranks at a time, to the compressed
    layer that lost the most score at its chosen candidate, first up to the rank of
    its next candidate, then beyond, as long as the model stays within the target.
    Tucker-2 layers (two ranks) are left as selected.
    """
    plan = dict(plan)
    current = total_cost - sum(by_path[p].original - by_path[p].cost(r) for p, r in plan.items())
    order = sorted((p for p in plan if not isinstance(plan[p], tuple)), key=lambda p: (-loss[p], p))
    for use_caps in (True, False):
        active = list(order)
        while active:
            progressed = False
            for p in list(active):
                candidate = by_path[p]
                rank = plan[p]
                step = candidate.multiplicity
                bound = max_rank(candidate.geometry, candidate.scheme)
                limit = bound if (not use_caps or caps.get(p) is None) else min(bound, caps[p])
                new_rank = min(rank + step, limit)
                delta = candidate.cost(new_rank) - candidate.cost(rank)
                if new_rank <= rank or current + delta > budget_cost or candidate.cost(new_rank) >= candidate.original:
                    active.remove(p)
                    continue
                plan[p] = new_rank
                current += delta
                progressed = True
                break  # most sensitive layer first: restart from the top
            if not progressed:
                break
    return plan


def _rank_key(rank: Any) -> Any:
    return tuple(rank) if isinstance(rank, list | tuple) else int(rank)


def _match(table: dict[float, Any], ratio: float) -> float:
    for key in table:
        if math.isclose(key, ratio, rel_tol=1e-6):
            return key
    raise KeyError(ratio)


def _lookup(row: dict[float, float], ratio: float) -> float:
    return row[_match(row, ratio)]


def _tar(
    work: keras.Model,
    candidates: list[_Candidate],
    parameters: Any,
    evaluator: _Evaluator,
    stats: CompressionStats,
    total_cost: float,
    verbose: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    select_params = parameters.params.select_params
    target = float(select_params.target_comp_ratio)
    n = select_params.num_rank_indices
    if any(c.scheme == "tucker" for c in candidates):
        raise ValueError("TAR rank selection needs a single rank per layer; it does not apply to Tucker-2.")
    ranks_at: dict[int, dict[str, int]] = {i: {} for i in range(1, n)}
    for candidate in candidates:
        index_ranks = tar_candidate_ranks(candidate.relative_residuals(), n)
        bound = max_rank(candidate.geometry, candidate.scheme)
        for i, rank in index_ranks.items():
            rank = round_rank(rank, candidate.multiplicity, bound)
            if candidate.cost(rank) < candidate.original:
                ranks_at[i][candidate.path] = rank
    saved_total = sum(c.original for c in candidates)
    by_path = {c.path: c for c in candidates}
    ratios = {}
    for i, plan in ranks_at.items():
        compressed = sum(by_path[p].cost(r) for p, r in plan.items())
        untouched = sum(by_path[p].original for p in by_path if p not in plan)
        ratios[i] = (total_cost - saved_total + compressed + untouched) / total_cost
    meets = tar_indices_to_evaluate(ratios, target)
    progbar = _progress(len(meets), verbose)
    original_kernels = _original_kernels(candidates)  # what each swapped kernel of the working copy is restored to
    scores: dict[int, float] = {}
    for done, i in enumerate(meets, start=1):
        with contextlib.ExitStack() as stack:  # every kernel is restored at the end, whatever happens
            for p, r in ranks_at[i].items():  # one layer's reconstruction in memory at a time
                stack.enter_context(_kernel_slot(by_path[p].work_layer, original_kernels))(by_path[p].reconstructed(r))
                by_path[p].forget_approximation()
            scores[i] = evaluator(work, f"TAR residual index {i}/{n}")
        progbar.update(done, values=[("score", scores[i])])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        choice = tar_select(scores, ratios, target)
    for warning in caught:
        warnings.warn(f"compress_model: {warning.message}", UserWarning, stacklevel=3)
    if not choice.reached:
        stats.notes.append(choice.message)
    stats.tar_index_scores = scores
    stats.selected_comp_ratio = ratios[choice.index]
    stats.notes.append(
        f"TAR chose residual index {choice.index}/{n} (relative residual ~{choice.index / n:.2f} per layer)"
    )
    plan = dict(ranks_at[choice.index])
    chosen = {p: by_path[p].cost(r) / by_path[p].original for p, r in plan.items()}
    return plan, chosen


class ModelCompressor:
    """AIMET-style entry point: ``ModelCompressor.compress_model`` is :func:`compress_model`.

    Example:
        >>> import tfcompress as tfc
        >>> tfc.ModelCompressor.compress_model is tfc.compress_model
        True
    """

    compress_model = staticmethod(compress_model)
