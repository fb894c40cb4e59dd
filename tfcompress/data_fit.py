"""Data-aware factors for Keras layers: which fit for which layer and scheme, and the forward-order refit of a
compressed model.

:mod:`tfcompress.data_aware` holds the math on moments; :mod:`tfcompress.activations` reads the moments from
sample data. This module joins them to Keras layers:

* :func:`fit_layer` gives the factor kernels (in the decomposed layer's weight order) and bias of one layer at
  one rank, fitted to the moments of its inputs, and :func:`composed_kernel` the original-shaped kernel they
  are equivalent to (what the selection swaps into the working copy).
* :func:`refit_forward` fits every decomposed layer of a compressed model in forward order so that it
  reproduces the ORIGINAL layer's output from the COMPRESSED model's inputs (asymmetric): the errors of the
  layers before are absorbed instead of accumulated down the network.

Example:
    >>> import keras, numpy as np, tfcompress as tfc
    >>> x = np.random.default_rng(0).normal(size=(64, 8, 8, 3)).astype("float32")
    >>> inp = keras.Input((8, 8, 3))
    >>> model = keras.Model(inp, keras.layers.Conv2D(8, 3, name="c")(keras.layers.Conv2D(6, 3, name="b")(inp)))
    >>> small = tfc.rewrite_model(model, {"b": ("weight_svd", 2), "c": ("spatial_svd", 4)})
    >>> report = refit_forward(model, small, x, samples=500)
    >>> sorted(report.layers), report.layers["c"].relative_error <= report.layers["c"].data_free_relative_error
    (['b', 'c'], True)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from . import data_aware, decompose, unfoldings
from .activations import MAX_FEATURES, MomentCollector, PatchSpec, patch_spec
from .cost import layer_kind
from .data_aware import FitProblem, LowRankFit, Moments
from .graph import walk_layers

__all__ = [
    "LayerFit",
    "FitReport",
    "fit_layer",
    "layer_problem",
    "composed_kernel",
    "data_aware_reason",
    "input_width",
    "refit_forward",
    "reference_budget",
    "weights_budget",
    "leading_within",
    "sample_images",
    "positions_per_input",
    "readable_reason",
    "call_counts",
    "selection_moments",
    "fitting_threads",
]

#: about this many sampled output positions per image (as channel pruning takes them) for inputs of up to
#: ``PIXELS_PER_STEP`` positions (28x28); larger inputs give more positions per image, one more ``POSITIONS_PER_IMAGE``
#: per ``PIXELS_PER_STEP`` up to ``MAX_POSITIONS_PER_IMAGE`` (64 at 224x224): the positions of a large image are
#: many and varied, and every image read is a forward pass of the whole model (twice per refitted layer), the
#: larger part of the data-aware cost on large inputs
POSITIONS_PER_IMAGE = 8
PIXELS_PER_STEP = 28 * 28
MAX_POSITIONS_PER_IMAGE = 64

logger = logging.getLogger("tfcompress")


@dataclass
class LayerFit:
    """One layer's data-aware fit, as the stats report it."""

    scheme: str
    relative_error: float
    data_free_relative_error: float
    start: str
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, scheme: str, fit: LowRankFit) -> LayerFit:
        return cls(scheme, fit.relative_error, fit.data_free_relative_error, fit.start, list(fit.notes))

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "relative_output_error": self.relative_error,
            "data_free_relative_output_error": self.data_free_relative_error,
            "start": self.start,
            "notes": list(self.notes),
        }


@dataclass
class FitReport:
    """What :func:`refit_forward` did: per layer the fit (or why the layer kept its data-free factors), the seconds
    spent reading activations and fitting."""

    layers: dict[str, LayerFit] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    collect_seconds: float = 0.0
    fit_seconds: float = 0.0


def sample_images(data: Any, model: keras.Model, samples: int, owner: str) -> np.ndarray:
    """The model inputs the data-aware fits read: enough of ``data`` for ``samples`` positions per layer
    (:func:`positions_per_input` per input, at least 16 inputs). ``data`` takes the forms of
    ``ChannelPruningParameters.data``; anything else is refused with a TypeError naming ``owner``.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> sample_images((np.ones((100, 4)), np.zeros(100)), m, 200, "rewrite_model").shape
        (25, 4)
    """
    from ._checks import is_int, is_real
    from .pruning.sampling import check_data_form, model_inputs

    if data is None or isinstance(data, str | bytes) or is_real(data):
        raise TypeError(f"{owner}: data must be model inputs (a numpy array or a tf.data.Dataset), got {data!r}.")
    check_data_form(data, f"{owner}: data")
    if not is_int(samples) or samples < 1:
        raise ValueError(f"{owner}: num_reconstruction_samples must be an int >= 1, got {samples!r}.")
    per_input = positions_per_input(model)
    return model_inputs(data, model, max(16, -(-int(samples) // per_input)), f"{owner}: data")


def positions_per_input(model: keras.Model) -> int:
    """Sampled positions per model input the data-aware fits plan for: ``POSITIONS_PER_IMAGE`` (8) up to 28x28
    inputs, 8 more per 784 positions of the input beyond that, at most ``MAX_POSITIONS_PER_IMAGE`` (64).

    Example:
        >>> import keras
        >>> [positions_per_input(keras.Sequential([keras.Input((s, s, 3)), keras.layers.Conv2D(1, 1)]))
        ...  for s in (28, 64, 224)]
        [8, 40, 64]
    """
    try:
        shape = tuple(model.inputs[0].shape)[1:-1]
    except (AttributeError, IndexError, TypeError):
        return POSITIONS_PER_IMAGE
    if not shape or any(d is None for d in shape):
        return POSITIONS_PER_IMAGE
    steps = max(1, int(np.prod(shape)) // PIXELS_PER_STEP)
    return int(min(MAX_POSITIONS_PER_IMAGE, POSITIONS_PER_IMAGE * steps))


def fitting_threads() -> Any:
    """One BLAS thread for the fits, whatever their size. TensorFlow's pools (and, on a shared machine, other
    processes) keep the cores busy; a multi-threaded LAPACK factorisation then waits on its own threads: measured
    on ResNet50's widest spatial-SVD layer (3x3, 512 -> 512; ten candidate ranks) on 2 shared cores, 34.6 s with
    every thread (an eigendecomposition of 1536x1536 took 11 s) against 9.2 s on one (0.7 s). The large products
    lose at most the second core's share on an idle machine."""
    return decompose.blas_single_thread()


def _kernel_and_bias(layer: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The kernel and bias the fits work on (float64); an EinsumDense's as its unfolded ``(in, out)`` matrix and,
    when its bias spans exactly the output features, their vector (else ``None``: see :func:`_einsum_bias`)."""
    kind = layer_kind(layer)
    if kind == "separable_conv2d":  # the pointwise (1, 1, C*dm, N) kernel, as the matrix it is
        pointwise = np.asarray(keras.ops.convert_to_numpy(layer.pointwise_kernel), dtype=np.float64)
        bias = np.asarray(keras.ops.convert_to_numpy(layer.bias), dtype=np.float64) if layer.use_bias else None
        return pointwise.reshape(pointwise.shape[-2], pointwise.shape[-1]), bias
    kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), dtype=np.float64)
    if kind == "einsum_dense":
        from .einsum_unfold import einsum_unfold

        return einsum_unfold(kernel, layer.equation), _einsum_bias(layer)[0]
    bias = np.asarray(keras.ops.convert_to_numpy(layer.bias), dtype=np.float64) if layer.use_bias else None
    return kernel, bias


def _einsum_bias(layer: Any) -> tuple[np.ndarray | None, Any]:
    """``(vector, fold)`` of an EinsumDense's bias over the output features in the unfolding's order, with the
    function folding a fitted vector back to the bias's shape; ``(None, None)`` without a bias or when the bias
    does not span exactly the output features (e.g. only some of them): then the fit leaves the bias as it is
    and fits the factors to the uncentred inputs, which is exact for that fixed bias."""
    from .einsum_unfold import einsum_split

    if getattr(layer, "bias", None) is None:
        return None, None
    split = einsum_split(layer.equation)
    axes = str(layer.bias_axes or "")
    bias = np.asarray(keras.ops.convert_to_numpy(layer.bias), dtype=np.float64)
    sizes = dict(zip(split.kernel_spec, layer.kernel.shape, strict=True))
    if sorted(axes) != sorted(split.produced) or bias.size != int(np.prod([sizes[c] for c in axes])):
        return None, None
    in_output = [c for c in split.output_spec if c in axes]  # the bias's axes in output order
    shape = bias.shape
    to_produced = [in_output.index(c) for c in split.produced]
    vector = bias.reshape([sizes[c] for c in in_output]).transpose(to_produced).reshape(-1)

    def fold(fitted: np.ndarray) -> np.ndarray:
        produced = np.asarray(fitted).reshape([sizes[c] for c in split.produced])
        return produced.transpose([split.produced.index(c) for c in in_output]).reshape(shape)

    return vector, fold


def input_width(layer: Any) -> int:
    """The width of the vectors a readable, built layer's kernel multiplies (a convolution's whole patch): its
    input moment is ``width²`` numbers.

    Example:
        >>> import keras
        >>> conv = keras.layers.Conv2D(4, 3); conv.build((None, 8, 8, 2))
        >>> input_width(conv)
        18
    """
    spec, why = patch_spec(layer)
    if spec is None:
        raise ValueError(f"layer '{layer.name}': its inputs cannot be read: {why}.")
    if spec.einsum is not None:
        from .einsum_unfold import einsum_split

        return int(einsum_split(layer.equation).matrix_shape(tuple(layer.kernel.shape))[0])
    if spec.depthwise is not None:
        return int(layer.pointwise_kernel.shape[-2])
    return int(spec.width(int(layer.kernel.shape[-2])))


def data_aware_reason(layer: Any, scheme: str) -> str | None:
    """Why ``layer`` (an original Keras layer) cannot get data-aware ``scheme`` factors; ``None`` when it can.

    Example:
        >>> import keras
        >>> conv = keras.layers.Conv2D(4, 3); conv.build((None, 8, 8, 2))
        >>> data_aware_reason(conv, "tucker") is None
        True
        >>> data_aware_reason(keras.layers.Conv2DTranspose(4, 3), "weight_svd")
        'Conv2DTranspose (data-aware factors read Dense, EinsumDense, Conv1D, Conv2D and SeparableConv2D layers)'
    """
    spec, why = patch_spec(layer)
    if spec is None:
        return why
    if layer_kind(layer) == "conv1d" and scheme == "tucker":
        return "Tucker-2 of a Conv1D"
    if not getattr(layer, "built", False):
        return "the layer is not built"
    width = input_width(layer)
    if width > MAX_FEATURES:
        return f"its input patch has {width} values (> {MAX_FEATURES}: the moments would be too large)"
    return None


def layer_problem(layer: Any, scheme: str, moments: Moments) -> FitProblem:
    """The rank-independent part of ``layer``'s data-aware ``scheme`` fits (see :class:`FitProblem`): build it once
    per layer and pass it to :func:`fit_layer` for every rank."""
    kind = layer_kind(layer)
    kernel, bias = _kernel_and_bias(layer)
    if kind in ("dense", "einsum_dense", "separable_conv2d"):
        return FitProblem(kernel, bias, moments, 1)
    if kind == "conv1d":
        kernel = kernel[:, None]
    return data_aware.conv2d_problem(scheme, kernel, bias, moments)


def fit_layer(
    layer: Any, scheme: str, rank: Any, moments: Moments, problem: FitProblem | None = None
) -> tuple[list[np.ndarray], LowRankFit]:
    """The decomposed layer's weights (factor kernels, then the bias when the layer has one) for ``layer`` at
    ``rank``, fitted to ``moments`` of its input patches, and the fit. ``problem``: :func:`layer_problem` of the
    same layer, scheme and moments (built when not given).

    Example:
        >>> import keras, numpy as np
        >>> dense = keras.layers.Dense(5); dense.build((None, 4))
        >>> acc = data_aware.MomentAccumulator(4); acc.add(np.random.default_rng(0).normal(size=(50, 4)))
        >>> weights, fit = fit_layer(dense, "svd", 2, acc.moments())
        >>> [w.shape for w in weights]
        [(4, 2), (2, 5), (5,)]
    """
    kind = layer_kind(layer)
    kernel, bias = _kernel_and_bias(layer)
    if kind == "dense":
        fit = data_aware.fit_dense(kernel, bias, moments, int(rank), problem)
        factors = list(fit.factors)
    elif kind == "einsum_dense":
        fit = data_aware.fit_dense(kernel, bias, moments, int(rank), problem)
        factors = _einsum_factors(layer, *fit.factors)
    elif kind == "separable_conv2d" and scheme == "weight_svd":  # the depthwise kernel is kept as it is
        fit = data_aware.fit_dense(kernel, bias, moments, int(rank), problem)
        a, b = fit.factors
        factors = [keras.ops.convert_to_numpy(layer.depthwise_kernel), a[None, None], b[None, None]]
    elif kind == "conv2d":
        factors, fit = data_aware.fit_conv2d(scheme, kernel, bias, moments, rank, problem)
    elif kind == "conv1d" and scheme in ("weight_svd", "spatial_svd"):
        as_2d, fit = data_aware.fit_conv2d(scheme, kernel[:, None], bias, moments, rank, problem)
        factors = [as_2d[0][0], as_2d[1][:, 0]] if scheme == "weight_svd" else [as_2d[0][:, 0], as_2d[1][0]]
    else:
        raise ValueError(f"layer '{layer.name}': no data-aware {scheme!r} factors for a {kind!r} layer.")
    dtype = np.dtype((layer.pointwise_kernel if kind == "separable_conv2d" else layer.kernel).dtype)
    weights = [np.asarray(f, dtype=dtype) for f in factors]
    if kind == "einsum_dense" and getattr(layer, "bias", None) is not None:
        fold = _einsum_bias(layer)[1]
        kept = keras.ops.convert_to_numpy(layer.bias)  # a bias the fit cannot move is kept as it is
        weights.append(np.asarray(kept if fold is None else fold(fit.bias), dtype=dtype))
    elif bias is not None:
        weights.append(np.asarray(fit.bias, dtype=dtype))
    return weights, fit


def _einsum_factors(layer: Any, a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """The unfolded factors ``(in, r)``, ``(r, out)`` in SVDEinsumDense's shapes."""
    from .einsum_unfold import einsum_split

    split = einsum_split(layer.equation)
    sizes = dict(zip(split.kernel_spec, layer.kernel.shape, strict=True))
    r = a.shape[1]
    return [a.reshape(*(sizes[c] for c in split.summed), r), b.reshape(r, *(sizes[c] for c in split.produced))]


def composed_kernel(layer: Any, scheme: str, weights: list[np.ndarray]) -> np.ndarray:
    """The kernel of ``layer``'s shape that the factor kernels in ``weights`` are equivalent to.

    Example:
        >>> import keras, numpy as np
        >>> conv = keras.layers.Conv2D(4, 3); conv.build((None, 5, 5, 2))
        >>> composed_kernel(conv, "weight_svd", [np.ones((1, 1, 2, 1)), np.ones((3, 3, 1, 4))]).shape
        (3, 3, 2, 4)
    """
    kind = layer_kind(layer)
    factors = weights[:3] if scheme == "tucker" else weights[:2]
    if kind == "dense":
        return factors[0] @ factors[1]
    if kind == "einsum_dense":
        from .einsum_unfold import einsum_compose

        return einsum_compose(factors[0], factors[1], layer.equation)
    if kind == "separable_conv2d":  # the pointwise kernel (the one the candidates swap)
        a, b = weights[1], weights[2]
        return (a.reshape(a.shape[-2], -1) @ b.reshape(b.shape[-2], -1))[None, None]
    if kind == "conv1d":
        compose = (
            unfoldings.conv1d_weight_svd_compose if scheme == "weight_svd" else unfoldings.conv1d_spatial_svd_compose
        )
        return compose(*factors)
    compose = {
        "weight_svd": decompose.weight_svd_compose,
        "spatial_svd": decompose.spatial_svd_compose,
        "tucker": decompose.tucker2_compose,
    }[scheme]
    return compose(*factors)


def _plan_entries(plan: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    entries = {}
    for path, entry in plan.items():
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
            raise TypeError(f"refit_forward: plan entries must be (scheme, rank) pairs, got {entry!r} for '{path}'.")
        entries[str(path)] = entry
    return entries


def _decomposed_layers(original: keras.Model, compressed: keras.Model) -> dict[str, tuple[Any, Any, str, Any]]:
    """``{path: (original layer, decomposed layer, scheme, rank)}`` for the decomposed layers, in the models' layer
    order: top-level ones, and those inside nested models or custom layers (named by their path)."""
    from .layers.base import DecomposedConv
    from .layers.svd_dense import SVDDense
    from .layers.svd_einsum_dense import SVDEinsumDense

    sources = {ref.path: ref.layer for ref in walk_layers(original, sublayers=True)}
    found = {}
    for ref in walk_layers(compressed, sublayers=True):
        layer = ref.layer
        if not isinstance(layer, SVDDense | SVDEinsumDense | DecomposedConv) or ref.path not in sources:
            continue
        scheme = "svd" if isinstance(layer, SVDDense | SVDEinsumDense) else layer.scheme
        rank = tuple(layer.ranks) if scheme == "tucker" else int(layer.rank)
        found[ref.path] = (sources[ref.path], layer, scheme, rank)
    return found


def _is_top_level(model: keras.Model, path: str, layer: Any) -> bool:
    try:
        return model.get_layer(path) is layer
    except ValueError:
        return False


def readable_reason(
    model: keras.Model, path: str, layer: Any, scheme: str, calls: Mapping[str, int] | None = None
) -> str | None:
    """Why the data-aware fits cannot read ``layer`` (named ``path`` in ``model``): a nested or shared layer, a
    kind the fits do not cover; ``None`` when they can. ``calls``: ``{path: calls per forward pass}`` (read from
    ``model``'s graph when not given; a layer's own node count is no measure: a loaded Sequential model's layers
    hold nodes from being built as well)."""
    if calls is None:
        calls = call_counts(model)
    if calls.get(path, 1) > 1:
        return "the layer is called more than once"
    return data_aware_reason(layer, scheme)


def call_counts(model: keras.Model) -> dict[str, int]:
    """``{path: times the layer runs in one forward pass}`` for every leaf layer of ``model`` (and every layer inside
    a custom layer)."""
    return {ref.path: ref.calls for ref in walk_layers(model, sublayers=True)}


def selection_moments(
    model: keras.Model,
    layers: Mapping[str, tuple[Any, str]],
    images: np.ndarray,
    samples: int,
    seed: int = 0,
    calls: Mapping[str, int] | None = None,
) -> tuple[dict[str, Moments], dict[str, str], float]:
    """The moments of each readable layer's input patches in ``model`` (one pass of ``images``), for the
    selection's data-aware candidates: ``({path: Moments}, {path: why not}, seconds)``. ``layers``:
    ``{path: (layer, scheme)}``; ``calls``: :func:`call_counts` of ``model`` (read from its graph when not given)."""
    reasons = {}
    names = []
    if calls is None:
        calls = call_counts(model)
    for path, (layer, scheme) in layers.items():
        why = readable_reason(model, path, layer, scheme, calls)
        if why is None:
            names.append(path)
        else:
            reasons[path] = why
    if not names:
        return {}, reasons, 0.0
    collector = MomentCollector(images, samples, seed)
    specs = {name: patch_spec(layers[name][0])[0] for name in names}
    hooked = {name: layers[name][0] for name in names if not _is_top_level(model, name, layers[name][0])}
    moments = collector.moments(model, names, specs=specs, layers=hooked)  # type: ignore[arg-type]
    return moments, reasons, collector.seconds


def refit_forward(
    original: keras.Model,
    compressed: keras.Model,
    images: np.ndarray,
    samples: int = 2000,
    seed: int = 0,
    only: Mapping[str, Any] | None = None,
    keep_bytes: int | None = None,
) -> FitReport:
    """Refit the decomposed layers of ``compressed`` (a rewrite of ``original``) in forward order, in place.

    Each decomposed layer (``SVDDense``, ``SVDEinsumDense``, the decomposed convolutions; top-level, or inside a
    nested model or a custom layer, named by its path) gets the factors and bias that make it reproduce the
    ORIGINAL layer's outputs (before the activation) from the inputs the COMPRESSED model gives it, at ``samples``
    sampled positions of ``images`` (model inputs). A layer whose inputs cannot be read (a shared layer, a
    transposed convolution, a too-wide patch) keeps its data-free factors and is listed in
    :attr:`FitReport.skipped` with the reason. ``only``: limit to these layer paths.
    ``original`` is never changed.

    **Cost.** Each layer needs one pass of the images through ``compressed`` (its inputs change as the layers
    before it are refitted). The original layers' outputs do not change: one pass of ``original`` reads them at
    the sampled positions for the next layers in forward order while they fit in ``keep_bytes`` (``samples x N``
    float32 values per layer; default :func:`reference_budget`), so the original model runs a few times, not once
    per layer. Only those outputs are kept: a layer's moments are ``O(dim²)`` for its inputs and ``O(dim·N)``
    for their cross moment with the outputs.
    """
    report = FitReport()
    decomposed = _decomposed_layers(original, compressed)
    if only is not None:
        wanted = set(_plan_entries(only))
        decomposed = {k: v for k, v in decomposed.items() if k in wanted}
    if keep_bytes is None:
        keep_bytes = reference_budget(original)
    collector = MomentCollector(images, samples, seed)
    calls = call_counts(original)
    readable: dict[str, tuple[PatchSpec, tuple[np.ndarray, np.ndarray | None]]] = {}
    for name, (source, _target, scheme, _rank) in decomposed.items():  # the models' layer order: forward
        why = readable_reason(original, name, source, scheme, calls)
        if why is None:
            readable[name] = (patch_spec(source)[0], _target_map(source))  # type: ignore[assignment]
        else:
            report.skipped[name] = why
    order = list(readable)
    held: dict[str, np.ndarray] = {}
    for index, name in enumerate(order):
        source, target, scheme, rank = decomposed[name]
        spec = readable[name][0]
        start = time.perf_counter()
        if name not in held:
            chunk = leading_within(order[index:], lambda n: samples * readable[n][1][0].shape[1] * 4, keep_bytes)
            hooked = {n: decomposed[n][0] for n in chunk if not _is_top_level(original, n, decomposed[n][0])}
            held.update(
                collector.outputs(
                    original,
                    chunk,
                    {n: readable[n][1] for n in chunk},
                    {n: readable[n][0] for n in chunk},
                    layers=hooked,
                )
            )
        outputs = {name: held.pop(name)}
        hooked = {} if _is_top_level(original, name, source) else {"layers": {name: target}}
        moments = collector.moments(compressed, [name], specs={name: spec}, outputs=outputs, **hooked)[name]
        del outputs
        report.collect_seconds += time.perf_counter() - start
        start = time.perf_counter()
        with fitting_threads():
            weights, fit = fit_layer(source, scheme, rank, moments)
        target.set_weights(weights)
        report.fit_seconds += time.perf_counter() - start
        report.layers[name] = LayerFit.of(scheme, fit)
        logger.info(
            "data-aware refit of %s (%s): relative output error %.4g (data-free %.4g)",
            name,
            scheme,
            fit.relative_error,
            fit.data_free_relative_error,
        )
    return report


#: the original layers' sampled outputs :func:`refit_forward` keeps at most: this share of the model's weights,
#: at least ``REFERENCE_MIN_BYTES``
REFERENCE_SHARE = 0.25
REFERENCE_MIN_BYTES = 16 * 2**20


def reference_budget(model: keras.Model) -> int:
    """Bytes of original-layer outputs :func:`refit_forward` keeps between passes of the original model:
    ``max(REFERENCE_MIN_BYTES, REFERENCE_SHARE x the weights' bytes)``.

    Example:
        >>> import keras
        >>> reference_budget(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])) == 16 * 2**20
        True
    """
    return weights_budget(model, REFERENCE_SHARE, REFERENCE_MIN_BYTES)


def weights_budget(model: keras.Model, share: float, at_least: int) -> int:
    """``max(at_least, share x the bytes of model's weights)``: the data-aware stages' memory bounds.

    Example:
        >>> import keras
        >>> weights_budget(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), 1.0, 0)   # 8 floats
        32
    """
    weights = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
    return int(max(at_least, share * weights))


def leading_within(order: Sequence[str], size: Callable[[str], int], budget: int) -> list[str]:
    """The first name of ``order`` (whatever its size) and the ones after it while their ``size`` in bytes, all
    together, stays within ``budget``: what one pass reads for the layers walked next.

    Example:
        >>> leading_within(["a", "b", "c"], {"a": 5, "b": 3, "c": 3}.get, 8), leading_within(["a", "b"], len, 0)
        (['a', 'b'], ['a'])
    """
    chunk, used = [], 0
    for name in order:
        used += size(name)
        if chunk and used > budget:
            break
        chunk.append(name)
    return chunk


def _target_map(layer: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The original layer's kernel as the ``(width, N)`` matrix its input rows multiply, and the bias the fits
    reproduce (the one :func:`_kernel_and_bias` gives: an EinsumDense bias the fit cannot move is left out, as
    it is kept as it is)."""
    kernel, bias = _kernel_and_bias(layer)
    return kernel.reshape(-1, kernel.shape[-1]), bias
