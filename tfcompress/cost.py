"""MACs and parameter counts of layers and models, maximum ranks, and rank-for-ratio.

The cost formulas are plain Python on a :class:`LayerGeometry` (channels, kernel
size, input and output resolution); only :func:`layer_geometry`,
:func:`model_cost` and :func:`rank_for_ratio` look at Keras objects.

MACs count one multiply-accumulate per weight use for one sample (batch 1); biases,
normalisation, activations and pooling count as 0 MACs. A layer that runs several
times in one forward pass (a shared layer) counts its MACs once per run and its
parameters once.

Costs of a decomposed ``Conv2D`` with input ``H x W``, output ``Ho x Wo``, kernel
``kh x kw``, ``C`` input and ``N`` output channels, rank ``r``:

=============  ====================================  =============================
scheme         MACs                                  parameters (without bias)
=============  ====================================  =============================
original       Ho*Wo*kh*kw*C*N                       kh*kw*C*N
weight SVD     H*W*C*r + Ho*Wo*kh*kw*r*N             C*r + kh*kw*r*N
spatial SVD    Ho*W*kh*C*r + Ho*Wo*kw*r*N            kh*C*r + kw*r*N
Tucker-2       H*W*C*r1 + Ho*Wo*kh*kw*r1*r2          C*r1 + kh*kw*r1*r2 + r2*N
               + Ho*Wo*r2*N
=============  ====================================  =============================

A ``Conv1D`` (input length ``L``, output ``Lo``, kernel ``k``) is costed as a ``Conv2D``
with a ``k x 1`` kernel on an ``L x 1`` input: weight SVD ``L*C*r + Lo*k*r*N``, spatial
SVD ``Lo*k*C*r + Lo*r*N``. The other convolutions (``M = C*dm`` for a depth multiplier
``dm``):

=====================  ===================================  ==================================
layer, scheme          MACs                                 parameters (without bias)
=====================  ===================================  ==================================
SeparableConv2D        Ho*Wo*(kh*kw*M + M*N)                kh*kw*M + M*N
 weight SVD            Ho*Wo*(kh*kw*M + (M + N)*r)          kh*kw*M + (M + N)*r
Conv2DTranspose        H*W*kh*kw*C*N                        kh*kw*C*N
 weight SVD            H*W*C*r + H*W*kh*kw*r*N              C*r + kh*kw*r*N
=====================  ===================================  ==================================

A ``Dense`` layer ``in -> units`` applied at ``P`` positions costs ``P*in*units``
MACs, and ``P*(in + units)*r`` once split at rank ``r``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import keras

from ._checks import is_int, is_real
from .einsum_unfold import einsum_problem, einsum_split
from .enums import CompressionScheme, CostMetric, coerce_enum
from .graph import check_graph_model, walk_calls
from .layer_macs import Uncounted, UnknownSize, layer_macs
from .layers import (
    SpatialSVDConv1D,
    SpatialSVDConv2D,
    SVDDense,
    SVDEinsumDense,
    SVDSeparableConv2D,
    TuckerConv2D,
    WeightSVDConv1D,
    WeightSVDConv2D,
    WeightSVDConv2DTranspose,
)
from .layers.base import DecomposedConv
from .layers.svd_einsum_dense import positions_of

__all__ = [
    "Cost",
    "LayerGeometry",
    "LayerCost",
    "ModelCost",
    "original_cost",
    "decomposed_cost",
    "max_rank",
    "max_rank_for_budget",
    "round_rank",
    "layer_geometry",
    "layer_scheme",
    "model_cost",
    "UncountedMacsWarning",
    "rank_for_ratio",
]

#: per-layer schemes: "svd" (Dense), "weight_svd", "spatial_svd", "tucker" (Conv2D)
LAYER_SCHEMES = ("svd", "weight_svd", "spatial_svd", "tucker")

#: the schemes each kind of layer can be decomposed with (the first is what "weight_svd" means for it)
KIND_SCHEMES: dict[str, tuple[str, ...]] = {
    "dense": ("svd",),
    "einsum_dense": ("svd",),
    "conv2d": ("weight_svd", "spatial_svd", "tucker"),
    "conv1d": ("weight_svd", "spatial_svd"),
    "separable_conv2d": ("weight_svd",),
    "conv2d_transpose": ("weight_svd",),
}

#: Keras layer class of each kind, and the kind's display name in messages
KIND_CLASSES: dict[str, Any] = {
    "dense": keras.layers.Dense,
    "einsum_dense": keras.layers.EinsumDense,
    "conv2d": keras.layers.Conv2D,
    "conv1d": keras.layers.Conv1D,
    "separable_conv2d": keras.layers.SeparableConv2D,
    "conv2d_transpose": keras.layers.Conv2DTranspose,
}

#: the layers whose cost comes from a LayerGeometry: the decomposable Keras layers and their decomposed twins
GEOMETRY_CLASSES = (*KIND_CLASSES.values(), SVDDense, SVDEinsumDense, DecomposedConv)


#: the kind of layer each decomposed layer class replaces
_TWIN_KINDS: dict[type, str] = {
    SVDDense: "dense",
    SVDEinsumDense: "einsum_dense",
    WeightSVDConv1D: "conv1d",
    SpatialSVDConv1D: "conv1d",
    SVDSeparableConv2D: "separable_conv2d",
    WeightSVDConv2DTranspose: "conv2d_transpose",
    WeightSVDConv2D: "conv2d",
    SpatialSVDConv2D: "conv2d",
    TuckerConv2D: "conv2d",
}


def layer_kind(layer: Any) -> str | None:
    """The :class:`LayerGeometry` kind of a decomposable Keras layer or decomposed twin, ``None`` for others.

    Example:
        >>> import keras
        >>> layer_kind(keras.layers.Conv1D(4, 3)), layer_kind(keras.layers.ReLU())
        ('conv1d', None)
    """
    for cls, kind in _TWIN_KINDS.items():
        if isinstance(layer, cls):
            return kind
    for kind, cls in KIND_CLASSES.items():
        if isinstance(layer, cls):
            return kind
    return None


@dataclass(frozen=True)
class Cost:
    """MACs (per sample) and parameters of one layer or model."""

    macs: int
    params: int

    def metric(self, cost_metric: CostMetric | str) -> int:
        """The number that ``cost_metric`` compares: MACs for ``mac``, parameters for ``memory``."""
        metric = coerce_enum(cost_metric, CostMetric, "cost_metric")
        if metric is CostMetric.mac:
            return self.macs
        if metric is CostMetric.memory:
            return self.params
        raise ValueError("cost_metric 'latency' is measured, not computed from shapes; use 'mac' or 'memory' here.")


@dataclass(frozen=True)
class LayerGeometry:
    """What the cost formulas need to know about a decomposable layer.

    ``kind`` is one of ``KIND_SCHEMES``. A ``conv1d`` is described as a ``k x 1``
    convolution on an ``L x 1`` input (``kernel_size=(k, 1)``, ``in_hw=(L, 1)``);
    ``separable_conv2d`` also needs its ``depth_multiplier``.

    Example:
        >>> g = LayerGeometry("conv2d", 32, 64, kernel_size=(5, 5), in_hw=(14, 14), out_hw=(14, 14))
        >>> original_cost(g).macs
        10035200
    """

    kind: str  # a key of KIND_SCHEMES
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int] = (1, 1)
    in_hw: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)
    positions: int = 1  # Dense: product of the non-batch leading dims
    use_bias: bool = True
    name: str = "?"
    depth_multiplier: int = 1  # separable_conv2d only
    #: einsum_dense only: the equation (its kernel unfolds to (in_channels, out_channels)) and the bias size
    equation: str | None = None
    bias_params: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KIND_SCHEMES:
            raise ValueError(f"LayerGeometry.kind must be one of {list(KIND_SCHEMES)}, got {self.kind!r}.")


def _bias(g: LayerGeometry) -> int:
    if g.bias_params is not None:
        return g.bias_params if g.use_bias else 0
    return g.out_channels if g.use_bias else 0


def original_cost(g: LayerGeometry) -> Cost:
    """Cost of the uncompressed layer."""
    c, n = g.in_channels, g.out_channels
    if g.kind in ("dense", "einsum_dense"):
        return Cost(g.positions * c * n, c * n + _bias(g))
    kh, kw = g.kernel_size
    (h, w), (ho, wo) = g.in_hw, g.out_hw
    if g.kind == "separable_conv2d":
        m = c * g.depth_multiplier
        return Cost(ho * wo * (kh * kw * m + m * n), kh * kw * m + m * n + _bias(g))
    if g.kind == "conv2d_transpose":  # every input pixel scatters a kh x kw x N patch per input channel
        return Cost(h * w * kh * kw * c * n, kh * kw * c * n + _bias(g))
    return Cost(ho * wo * kh * kw * c * n, kh * kw * c * n + _bias(g))


def _check_scheme(g: LayerGeometry, scheme: str) -> str:
    scheme = str(getattr(scheme, "value", scheme))
    if g.kind in ("dense", "einsum_dense"):
        if scheme not in ("svd", "weight_svd", "spatial_svd"):
            raise ValueError(
                f"layer '{g.name}' is a {KIND_CLASSES[g.kind].__name__} layer; it can be decomposed with 'svd' only, "
                f"not {scheme!r}."
            )
        return "svd"
    allowed = KIND_SCHEMES[g.kind]
    if g.kind == "separable_conv2d" and scheme == "svd":
        return "weight_svd"  # its pointwise kernel is a matrix: plain SVD is its weight SVD
    if scheme not in allowed:
        raise ValueError(
            f"layer '{g.name}' is a {KIND_CLASSES[g.kind].__name__}; scheme must be "
            f"{' or '.join(repr(s) for s in allowed)}, got {scheme!r}."
        )
    return scheme


def decomposed_cost(g: LayerGeometry, scheme: str, rank: int | Sequence[int]) -> Cost:
    """Cost of the layer decomposed with ``scheme`` at ``rank`` (a pair ``(r_in, r_out)`` for Tucker-2).

    Example:
        >>> g = LayerGeometry("conv2d", 32, 64, kernel_size=(5, 5), in_hw=(14, 14), out_hw=(14, 14))
        >>> decomposed_cost(g, "spatial_svd", 53).macs
        4986240
    """
    scheme = _check_scheme(g, scheme)
    c, n, b = g.in_channels, g.out_channels, _bias(g)
    if scheme == "tucker":
        r1, r2 = (int(rank), int(rank)) if is_int(rank) else (int(rank[0]), int(rank[1]))
        kh, kw = g.kernel_size
        (h, w), (ho, wo) = g.in_hw, g.out_hw
        macs = h * w * c * r1 + ho * wo * kh * kw * r1 * r2 + ho * wo * r2 * n
        return Cost(macs, c * r1 + kh * kw * r1 * r2 + r2 * n + b)
    r = int(rank)
    if scheme == "svd":
        return Cost(g.positions * (c + n) * r, (c + n) * r + b)
    kh, kw = g.kernel_size
    (h, w), (ho, wo) = g.in_hw, g.out_hw
    if g.kind == "separable_conv2d":
        m = c * g.depth_multiplier
        return Cost(ho * wo * (kh * kw * m + (m + n) * r), kh * kw * m + (m + n) * r + b)
    if g.kind == "conv2d_transpose":
        return Cost(h * w * c * r + h * w * kh * kw * r * n, c * r + kh * kw * r * n + b)
    if scheme == "weight_svd":
        return Cost(h * w * c * r + ho * wo * kh * kw * r * n, c * r + kh * kw * r * n + b)
    return Cost(ho * w * kh * c * r + ho * wo * kw * r * n, kh * c * r + kw * r * n + b)


def max_rank(g: LayerGeometry, scheme: str) -> int | tuple[int, int]:
    """The rank of the full decomposition: beyond it, nothing is gained in accuracy.

    Example:
        >>> max_rank(LayerGeometry("conv2d", 1, 32, kernel_size=(5, 5)), "spatial_svd")
        5
    """
    scheme = _check_scheme(g, scheme)
    c, n = g.in_channels, g.out_channels
    kh, kw = g.kernel_size
    if scheme == "svd":
        return min(c, n)
    if g.kind == "separable_conv2d":
        return min(c * g.depth_multiplier, n)
    if scheme == "weight_svd":
        return min(c, kh * kw * n)
    if scheme == "spatial_svd":
        return min(c * kh, n * kw)
    return (c, n)


def _as_fraction(ratio: float) -> Fraction:
    # exact for ratios written as decimals (0.1 is one tenth, not 0.1000000000000000055...)
    return Fraction(repr(float(ratio)))


def max_rank_for_budget(g: LayerGeometry, scheme: str, cost_metric: CostMetric | str, budget: Fraction | int) -> int:
    """Largest ``r >= 0`` whose cost is ``<= budget`` (the cost is affine and increasing in ``r``)."""
    metric = coerce_enum(cost_metric, CostMetric, "cost_metric")
    scheme = _check_scheme(g, scheme)
    if scheme == "tucker":
        raise ValueError("max_rank_for_budget does not apply to Tucker-2 (two ranks); use rank_for_ratio.")
    at0 = decomposed_cost(g, scheme, 0).metric(metric)
    slope = decomposed_cost(g, scheme, 1).metric(metric) - at0
    if slope <= 0:
        return 0
    return max(0, math.floor((Fraction(budget) - at0) / slope))


def round_rank(rank: int, multiplicity: int, cap: int) -> int:
    """Round ``rank`` up to a multiple of ``multiplicity``, but never above ``cap`` (and never below ``rank``).

    Example:
        >>> round_rank(13, 8, 100), round_rank(13, 8, 14), round_rank(3, 1, 10)
        (16, 14, 3)
    """
    multiplicity = int(multiplicity)
    if multiplicity < 1:
        raise ValueError(f"multiplicity must be >= 1, got {multiplicity}.")
    rounded = -(-int(rank) // multiplicity) * multiplicity
    return max(int(rank), min(rounded, int(cap)))


def _tucker_rank_for_budget(
    g: LayerGeometry, metric: CostMetric, budget: Fraction, multiplicity: int
) -> tuple[int, int]:
    c, n = g.in_channels, g.out_channels
    full = original_cost(g).metric(metric)

    def pair(r1: int) -> tuple[int, int]:
        return r1, max(1, min(n, round(r1 * n / c)))

    best = (1, 1)  # the smallest decomposition, when even the proportional pairs exceed the budget
    for r1 in range(1, c + 1):
        r = pair(r1)
        if decomposed_cost(g, "tucker", r).metric(metric) <= budget:
            best = r
    if multiplicity > 1:
        rounded = tuple(min(-(-r // multiplicity) * multiplicity, bound) for r, bound in zip(best, (c, n), strict=True))
        if decomposed_cost(g, "tucker", rounded).metric(metric) <= full:
            best = rounded
    return best


def _rank_for_ratio(
    g: LayerGeometry, ratio: float, scheme: str, cost_metric: CostMetric | str, multiplicity: int = 1
) -> int | tuple[int, int]:
    metric = coerce_enum(cost_metric, CostMetric, "cost_metric")
    scheme = _check_scheme(g, scheme)
    if not (is_real(ratio) and 0 < float(ratio)):
        raise ValueError(f"layer '{g.name}': ratio must be a number > 0, got {ratio!r}.")
    full = original_cost(g).metric(metric)
    budget = _as_fraction(ratio) * full
    if scheme == "tucker":
        return _tucker_rank_for_budget(g, metric, budget, int(multiplicity))
    bound = max_rank(g, scheme)
    rank = min(max(1, max_rank_for_budget(g, scheme, metric, budget)), bound)
    cap = min(bound, max(rank, max_rank_for_budget(g, scheme, metric, full)))
    return round_rank(rank, multiplicity, cap)


# ---------------------------------------------------------------- Keras side


def _shape_of(tensor_or_shape: Any) -> tuple:
    shape = getattr(tensor_or_shape, "shape", tensor_or_shape)
    return tuple(None if d is None else int(d) for d in shape)


def _layer_shapes(layer: Any, input_shape: Sequence[int | None] | None) -> tuple[tuple, tuple]:
    if input_shape is not None:
        in_shape = tuple(input_shape)
        out_shape = _shape_of(layer.compute_output_shape(in_shape))
        return in_shape, out_shape
    try:
        return _shape_of(layer.input), _shape_of(layer.output)
    except (AttributeError, ValueError):
        raise ValueError(
            f"layer '{layer.name}' has not been called on a known input, so its input shape is unknown; "
            "pass input_shape=(None, H, W, C) or use a layer of a built Functional/Sequential model."
        ) from None


def _hw(shape: tuple, layer: Any, which: str) -> tuple[int, int]:
    """``(H, W)`` of a 4-D shape, ``(L, 1)`` of a 3-D one (a Conv1D is costed as a ``k x 1`` Conv2D)."""
    if len(shape) not in (3, 4) or any(d is None for d in shape[1:-1]):
        raise ValueError(
            f"layer '{layer.name}': the {which} spatial size {shape} is not fully known, so MACs cannot be computed; "
            "give the model a fixed input size (e.g. keras.Input((224, 224, 3)))."
        )
    return (int(shape[1]), int(shape[2])) if len(shape) == 4 else (int(shape[1]), 1)


def layer_geometry(layer: Any, input_shape: Sequence[int | None] | None = None) -> LayerGeometry:
    """Geometry of a decomposable layer (``Dense``, ``EinsumDense``, ``Conv1D``, ``Conv2D``, ``SeparableConv2D``,
    ``Conv2DTranspose``) or of a decomposed twin, from its real input and output shapes.

    Example:
        >>> import keras
        >>> inp = keras.Input((28, 28, 1))
        >>> conv = keras.layers.Conv2D(32, 5, padding="same")
        >>> _ = keras.Model(inp, conv(inp))
        >>> layer_geometry(conv).out_hw
        (28, 28)
    """
    kind = layer_kind(layer)
    if kind is None:
        raise TypeError(
            f"layer '{getattr(layer, 'name', '?')}' ({type(layer).__name__}) is not a Dense, EinsumDense, Conv1D, "
            "Conv2D, SeparableConv2D or Conv2DTranspose layer; only those can be decomposed."
        )
    in_shape, out_shape = _layer_shapes(layer, input_shape)
    if kind == "einsum_dense":
        return _einsum_geometry(layer, in_shape)
    if kind == "dense":
        lead = [d for d in in_shape[1:-1]]
        if any(d is None for d in lead):
            raise ValueError(f"layer '{layer.name}': input shape {in_shape} has unknown inner dimensions.")
        return LayerGeometry(
            "dense",
            int(in_shape[-1]),
            int(layer.units),
            positions=math.prod(lead) if lead else 1,
            use_bias=bool(layer.use_bias),
            name=layer.name,
        )
    if isinstance(layer, keras.layers.Conv2D) and layer.built:
        c = int(layer.kernel.shape[2]) * int(getattr(layer, "groups", 1))
    else:
        c = int(in_shape[-1])
    kernel_size = tuple(int(k) for k in layer.kernel_size)
    return LayerGeometry(
        kind,
        c,
        int(layer.filters),
        kernel_size=kernel_size if len(kernel_size) == 2 else (kernel_size[0], 1),
        in_hw=_hw(in_shape, layer, "input"),
        out_hw=_hw(out_shape, layer, "output"),
        use_bias=bool(layer.use_bias),
        name=layer.name,
        depth_multiplier=int(getattr(layer, "depth_multiplier", 1)),
    )


def _einsum_geometry(layer: Any, in_shape: tuple) -> LayerGeometry:
    """An ``EinsumDense`` (or ``SVDEinsumDense``) as a dense map (in, out) applied at ``positions`` places."""
    if isinstance(layer, SVDEinsumDense):
        kernel_shape, bias = layer.kernel_shape, layer.bias
    else:
        if not layer.built:
            raise ValueError(f"layer '{layer.name}' is not built; build or call the model first.")
        kernel_shape, bias = tuple(int(d) for d in layer.kernel.shape), layer.bias
    try:
        split = einsum_split(layer.equation)
        positions = positions_of(layer.equation, in_shape)
    except ValueError as err:
        raise ValueError(f"layer '{layer.name}' ({type(layer).__name__}): {err}.") from None
    c, n = split.matrix_shape(kernel_shape)
    bias_params = 0 if bias is None else math.prod(int(d) for d in bias.shape)
    return LayerGeometry(
        "einsum_dense",
        c,
        n,
        positions=positions,
        use_bias=bias is not None,
        name=layer.name,
        equation=layer.equation,
        bias_params=bias_params,
    )


def layer_scheme(layer: Any) -> str | None:
    """The decomposition scheme a decomposed layer implements, or ``None`` for any other layer."""
    return getattr(layer, "scheme", None) if isinstance(layer, SVDDense | SVDEinsumDense | DecomposedConv) else None


@dataclass(frozen=True)
class LayerCost:
    """Cost of one leaf layer in a model: MACs (all runs, one sample) and parameters."""

    path: str
    class_name: str
    macs: int
    params: int
    calls: int = 1


@dataclass(frozen=True)
class ModelCost:
    """Whole-model totals and the per-layer rows, as returned by :func:`model_cost`."""

    macs: int
    params: int
    layers: dict[str, LayerCost] = field(default_factory=dict)
    #: ``{path: reason}`` of the layers and operations whose MACs are not known (left out of ``macs``)
    uncounted: dict[str, str] = field(default_factory=dict)

    def metric(self, cost_metric: CostMetric | str) -> int:
        """The total that ``cost_metric`` compares."""
        return Cost(self.macs, self.params).metric(cost_metric)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "macs": self.macs,
            "params": self.params,
            "layers": {k: asdict(v) for k, v in self.layers.items()},
            "uncounted": dict(self.uncounted),
        }

    def uncounted_message(self) -> str:
        """One line naming the uncounted layers and why (empty when every layer is counted)."""
        if not self.uncounted:
            return ""
        parts = [f"'{path}' ({reason})" for path, reason in self.uncounted.items()]
        return f"the MACs of {len(parts)} layer(s) are not known and not counted: " + "; ".join(parts)


def model_cost(model: keras.Model, *, warn: bool = True) -> ModelCost:
    """MACs (one sample) and parameters of the whole model, and per leaf layer (nested models included).

    Example:
        >>> import keras, tfcompress as tfc
        >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="c")])
        >>> cost = tfc.model_cost(m)
        >>> cost.macs, cost.params, cost.layers["c"].macs
        (1296, 40, 1296)
    """
    check_graph_model(model)
    rows: dict[str, LayerCost] = {}
    uncounted: dict[str, str] = {}
    macs = 0
    for call in walk_calls(model):
        op = call.operation
        try:
            per_call = layer_macs(op, call.args, call.kwargs, call.outputs, special=_geometry_macs)
        except UnknownSize as why:
            raise ValueError(f"layer '{call.path}': {why}.") from None
        except Uncounted as why:
            uncounted[call.path] = str(why)
            per_call = 0
        is_layer = isinstance(op, keras.layers.Layer)
        if not is_layer and not per_call and call.path not in uncounted:
            continue  # element-wise and shape operations: no row
        params = int(op.count_params()) if is_layer and op.built else 0
        rows[call.path] = LayerCost(call.path, type(op).__name__, per_call * call.calls, params, call.calls)
        macs += per_call * call.calls
    cost = ModelCost(int(macs), int(model.count_params()), rows, uncounted)
    if uncounted and warn:
        warnings.warn(f"model_cost('{model.name}'): {cost.uncounted_message()}.", UncountedMacsWarning, stacklevel=2)
    return cost


class UncountedMacsWarning(UserWarning):
    """``model_cost`` met layers whose MACs it cannot count; ``ModelCost.uncounted`` names them."""


def _geometry_macs(layer: Any, in_shape: tuple) -> int | None:
    """MACs of one call of a plain decomposable layer (``Dense``, ``Conv1D``, ``Conv2D``, ``SeparableConv2D``,
    ``Conv2DTranspose``) or a decomposed layer from the geometry formulas (so costs agree with ``rank_for_ratio`` to
    the MAC); ``None`` for any other layer."""
    if not isinstance(layer, GEOMETRY_CLASSES) or getattr(layer, "groups", 1) != 1:
        return None
    if type(layer) not in KIND_CLASSES.values() and layer_scheme(layer) is None:
        return None  # a subclass: counted from its weights by layer_macs
    if isinstance(layer, keras.layers.EinsumDense) and einsum_problem(layer.equation):
        return None  # counted from its equation by layer_macs
    if any(d is None for d in in_shape[1:]):
        return None
    g = layer_geometry(layer, input_shape=in_shape)
    scheme = layer_scheme(layer)
    return (original_cost(g) if scheme is None else decomposed_cost(g, scheme, layer.rank)).macs


def rank_for_ratio(
    layer: Any,
    ratio: float,
    scheme: CompressionScheme | str,
    cost_metric: CostMetric | str = CostMetric.mac,
    *,
    multiplicity: int = 1,
    input_shape: Sequence[int | None] | None = None,
) -> int | tuple[int, int]:
    """Largest rank whose cost is ``<= ratio * original cost`` of ``layer`` (at least 1, at most the max rank).

    With ``multiplicity`` > 1 the rank is then rounded up to a multiple of it, but
    never beyond the largest rank whose cost does not exceed the original's. For
    ``scheme="tucker"`` a pair ``(r_in, r_out)`` proportional to ``(C, N)`` is returned.
    The layer must have been called in a model (its real input/output shapes are
    used), or ``input_shape`` must be given.

    Example:
        >>> import keras, tfcompress as tfc
        >>> inp = keras.Input((14, 14, 32))
        >>> conv = keras.layers.Conv2D(64, 5, padding="same")
        >>> _ = keras.Model(inp, conv(inp))
        >>> tfc.rank_for_ratio(conv, 0.5, "spatial_svd", "mac"), tfc.rank_for_ratio(conv, 0.5, "weight_svd", "mac")
        (53, 15)
    """
    scheme = (
        coerce_enum(scheme, CompressionScheme, "scheme") if not (isinstance(scheme, str) and scheme == "svd") else "svd"
    )
    if scheme in (CompressionScheme.channel_pruning, CompressionScheme.auto):
        raise ValueError(f"rank_for_ratio applies to a decomposition scheme, not {scheme}.")
    g = layer_geometry(layer, input_shape=input_shape)
    return _rank_for_ratio(g, ratio, getattr(scheme, "value", scheme), cost_metric, multiplicity)
