"""The SVD schemes' candidates: which layers can be decomposed, and per layer its kernel, its decomposition
(computed once) and the kernel that the decomposed layer at a rank is equivalent to."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from .. import decompose, unfoldings
from .._checks import check_finite
from ..cost import (
    KIND_CLASSES,
    LayerGeometry,
    _rank_for_ratio,
    decomposed_cost,
    layer_geometry,
    layer_kind,
    original_cost,
)
from ..enums import CompressionScheme, CostMetric, Mode
from ..graph import LayerRef, no_candidates_detail, resolve_layers, walk_layers
from ..latency import LatencyMeter
from ..rewrite import _source_kernel, check_source
from ..stats import CompressionStats
from ..whole_model import sublayer_problem

logger = logging.getLogger("tfcompress")


@dataclass
class Candidate:
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
    data_fit: Any = field(default=None, repr=False)  # data-aware kernels: a tfcompress.data_stage.CandidateFit
    data_tag: str = ""  # the data-aware run's data (score caches keep them apart), also when this layer is not fitted

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
        """The kernel that the decomposed layer at ``rank`` is equivalent to (data-aware factors when the run has
        data for this layer, see :mod:`tfcompress.data_fit`)."""
        if self.data_fit is not None:
            return self.data_fit.kernel(self.ref.layer, self.scheme, rank, self.kernel.dtype)
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
        self.data_fit = None
        self.kernel = np.broadcast_to(np.zeros((), dtype=self.kernel.dtype), self.kernel.shape)

    def release_kernel(self) -> None:
        """Let go of the kernel's values (the SVD and data fit stay); ``kernel`` keeps its shape and dtype (a
        zero-stride view of one value). :func:`kernel_originals` then reads the working copy's value instead."""
        if any(self.kernel.strides):
            self.kernel = np.broadcast_to(np.zeros((), dtype=self.kernel.dtype), self.kernel.shape)

    def drop_svd(self) -> None:
        """Let go of this candidate's SVD and kept approximation (the memo of :func:`~tfcompress.decompose.reuse_svds`
        may still hold the SVD for the final rewrite)."""
        self._svd = None
        self._last = None

    def forget_approximation(self) -> None:
        """Drop the kept approximation (a full-size array) and the SVD's float32 products once the layer's
        candidates are done (a later reconstruction, e.g. of a whole plan, makes them again)."""
        self._last = None
        if self._svd is not None:
            self._svd.__dict__.pop("_float32", None)

    def keep_ranks_up_to(self, ranks: Any) -> None:
        """Hold only the singular vectors up to the highest of ``ranks`` (this layer's candidate ranks) once they
        are scored: the selected plan and the final layer use one of them (a higher rank is still served, by
        factorising again). Frees most of the SVD's memory on large layers (issue 19)."""
        ints = [int(r) for r in ranks if isinstance(r, int | np.integer)]
        if self._svd is not None and ints:
            self._svd.keep_leading(max(ints))

    def relative_residuals(self) -> np.ndarray:
        return decompose.relative_residuals(self._factor().s)


def kernel_originals(candidates: list[Candidate]) -> dict[int, np.ndarray]:
    """``{id(working copy's kernel variable): original value}``, from the candidates' own kernels (equal to the
    working copy's, which is a clone), so restoring a swapped kernel needs no further copy of it."""
    originals = {}
    for candidate in candidates:
        variable = _source_kernel(candidate.work_layer)
        if candidate.kernel.dtype == np.dtype(variable.dtype) and any(candidate.kernel.strides):  # not released
            originals[id(variable)] = candidate.kernel
    return originals


@contextlib.contextmanager
def kernel_slot(layer: Any, original_kernels: dict[int, np.ndarray]) -> Iterator[Callable[[np.ndarray], None]]:
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


def ineligibility(layer: Any, scheme: CompressionScheme, manual: bool) -> str | None:
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
        check_source(layer, kind)
    except (TypeError, ValueError) as err:
        return str(err)
    if getattr(layer, "lora_enabled", False):
        return "LoRA is enabled on this layer; merge or disable it before compressing"
    return None


def scheme_of_layer(layer: Any, scheme: CompressionScheme) -> str:
    if isinstance(layer, keras.layers.Dense | keras.layers.EinsumDense):
        return "svd"
    if scheme is CompressionScheme.auto:
        return "weight_svd"  # the first variant; compress_scheme="auto" tries the others too (see auto_variants)
    return scheme.value


def auto_variants(candidate: Candidate) -> list[Candidate]:
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


def relative_error(candidate: Candidate, rank: Any) -> float:
    """``||W - W_r|| / ||W||`` of ``candidate``'s kernel at ``rank``."""
    norm = float(np.linalg.norm(candidate.kernel)) or 1.0
    return float(np.linalg.norm(candidate.kernel - candidate.reconstructed(rank))) / norm


def inner_problem(ref: LayerRef, model: keras.Model, fresh_models: dict[int, Any] | None = None) -> str | None:
    """Why a layer of ``model`` held inside a custom layer cannot be replaced in a model that saves (``None`` when
    it can, and for every top-level layer). ``fresh_models`` keeps the models re-created whole for the check."""
    if ref.owner is None:
        return None
    problem = sublayer_problem(model, ref.owner, ref.attribute, fresh_models)
    return None if problem is None else f"inside custom layer '{ref.owner.name}': {problem}"


def resolve_ignored(refs: list[LayerRef], ignored: list[Any]) -> set[int]:
    if not ignored:
        return set()
    resolved = resolve_layers(refs, ignored, what="modules_to_ignore")
    return {id(ref.layer) for ref in resolved.values()}


def collect_candidates(
    model: keras.Model,
    scheme: CompressionScheme,
    parameters: Any,
    metric: CostMetric,
    meter: LatencyMeter | None,
    stats: CompressionStats,
) -> tuple[list[Candidate], dict[str, float]]:
    """The layers of ``model`` that ``scheme`` decomposes, as candidates (their working-copy layers unbound), and in
    manual mode each one's ratio. Layers left out are recorded in ``stats.skipped_layers`` with the reason."""
    refs = walk_layers(model, sublayers=True)  # layers inside custom layers too ("block/ffn")
    multiplicity = parameters.multiplicity
    fresh_models: dict[int, Any] = {}  # models re-created whole to check their custom layers' sublayers

    def make_candidate(ref: LayerRef) -> Candidate:
        layer = ref.layer
        kernel = np.asarray(keras.ops.convert_to_numpy(_source_kernel(layer)))  # its own dtype: no float64 copy
        if not np.issubdtype(kernel.dtype, np.floating) or kernel.dtype.itemsize < 4:
            kernel = kernel.astype(np.float32)
        check_finite(  # before any factorisation: LAPACK spins for ever on an infinity
            kernel,
            f"compress_model: the kernel of layer '{ref.path}'",
            "it cannot be decomposed: fix the weights, or leave the layer out (modules_to_ignore)",
        )
        return Candidate(
            ref=ref,
            work_layer=None,  # bound once the working copy exists
            scheme=scheme_of_layer(layer, scheme),
            geometry=layer_geometry(layer, input_shape=ref.input_shape),
            kernel=kernel,
            metric=metric,
            multiplicity=multiplicity,
            meter=meter,
        )

    candidates: list[Candidate] = []
    manual_ratios: dict[str, float] = {}
    if parameters.mode is Mode.manual:
        pairs = parameters.params.list_of_module_comp_ratio_pairs
        resolved = resolve_layers(refs, [layer for layer, _ in pairs], what="ManualModeParams")
        problems = []
        for layer_key, ratio in pairs:
            ref = resolved[layer_key]
            why = ineligibility(ref.layer, scheme, manual=True) or inner_problem(ref, model, fresh_models)
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
        return candidates, manual_ratios
    auto = parameters.params
    ignored = resolve_ignored(refs, auto.modules_to_ignore)
    stats.rank_select_scheme = auto.rank_select_scheme.value
    stats.target_comp_ratio = auto.target_comp_ratio
    for ref in refs:
        if layer_kind(ref.layer) is None:
            continue
        if id(ref.layer) in ignored:
            stats.skipped_layers[ref.path] = "in modules_to_ignore"
            continue
        why = ineligibility(ref.layer, scheme, manual=False) or inner_problem(ref, model, fresh_models)
        if why:
            stats.skipped_layers[ref.path] = why
            continue
        candidate = make_candidate(ref)
        smallest_rank = 1 if candidate.scheme != "tucker" else (1, 1)
        smallest = decomposed_cost(candidate.geometry, candidate.scheme, smallest_rank).metric(candidate.rank_metric)
        if smallest >= original_cost(candidate.geometry).metric(candidate.rank_metric):
            stats.skipped_layers[ref.path] = "even rank 1 costs as much as the original layer"
            continue
        candidates.append(candidate)
    if not candidates:
        raise ValueError(
            f"compress_model: no layer of '{model.name}' can be compressed with {scheme.value}: "
            + no_candidates_detail(model, stats.skipped_layers)
        )
    return candidates, manual_ratios


def factor_while_copying(
    candidates: list[Candidate], scheme: CompressionScheme, make_working_copy: Callable[[], keras.Model]
) -> tuple[keras.Model, dict[str, float]]:
    """Make the working copy while the candidates' SVDs run on background threads; returns ``(work, timings)``.

    LAPACK releases the GIL and cloning is mostly Python, so the two overlap; the SVDs are all done before the
    first callback, so they never compete with it for the CPU. Each candidate's ``work_layer`` is bound to its layer
    in the working copy and its ``kernel`` becomes a view of the SVD's copy (one copy of each kernel). The timings are
    ``svd_compute_seconds`` (the SVDs' own time) and ``svd_wait_seconds`` (what they added beyond the working copy).
    """
    # compress_scheme="auto" also tries other per-layer schemes (spatial SVD, Tucker-2): their SVDs are NOT made
    # here but one layer at a time while that layer is scored (see svd_search.auto_search), so that the run never
    # holds two SVDs of every layer at once (issue 19: auto peaked at 6.3x the weights when they were all made here)
    # compress_scheme="auto" makes every SVD that way: after a layer is scored its factors are cut to the scored
    # ranks and its kernel let go, which would not pay if every layer's full SVD were made up front
    factored = [] if scheme is CompressionScheme.auto else [c for c in candidates if c.scheme != "tucker"]
    matrices = []
    for c in factored:  # one copy of each kernel: it becomes a view of its unfolding
        matrices.append(c.svd_matrix())
        c.share_kernel(matrices[-1])
    background_svds = decompose.BackgroundSVDs(  # the unfolded kernels are new arrays: no second copy needed
        matrices,
        names=[f"layer '{c.path}'" for c in factored],
        copy=False,
    )
    with background_svds as background:
        work = make_working_copy()
        work_by_path = {ref.path: ref.layer for ref in walk_layers(work, sublayers=True)}
        for candidate in candidates:
            candidate.work_layer = work_by_path[candidate.path]
        wait_start = time.perf_counter()
        svds = background.wait()
    timings = {"svd_wait_seconds": time.perf_counter() - wait_start, "svd_compute_seconds": background.compute_seconds}
    for candidate, svd in zip(factored, svds[: len(factored)], strict=True):
        candidate._svd = svd
        candidate.share_kernel_with_svd()
    del background_svds, background, svds, matrices  # from here on the candidates (and the memo) hold them
    return work, timings
