"""Parameters of :func:`tfcompress.compress_model`, named as in AIMET so its users feel at home."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._checks import is_int, is_real
from .enums import Mode, RankSelectScheme, coerce_enum

__all__ = [
    "GreedySelectionParameters",
    "TarRankSelectionParameters",
    "WeightSvdParameters",
    "SpatialSvdParameters",
    "TuckerParameters",
    "AutoSchemeParameters",
    "ChannelPruningParameters",
]


def _check_ratio(value: Any, argument: str, allow_one: bool = True) -> float:
    if not is_real(value) or not math.isfinite(float(value)):
        raise TypeError(f"`{argument}` must be a number, got {value!r}.")
    value = float(value)
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (value > 0.0 and upper_ok):
        raise ValueError(f"`{argument}` must be in (0, 1] (compressed cost / original cost), got {value}.")
    return value


@dataclass
class GreedySelectionParameters:
    """Greedy per-layer selection: evaluate each layer alone at candidate ratios, then pick by score threshold.

    Args:
        target_comp_ratio: whole-model compressed cost / original cost to reach (0.5 = half); ``None`` with
            ``max_score_drop``: the cheapest plan within that drop.
        num_comp_ratio_candidates: ``N``; candidates are ``i/N`` for ``i = 1..N-1``.
        use_monotonic_fit: make each layer's score non-decreasing in the ratio
            (least-squares isotonic fit) before selecting, to smooth noisy evaluations.
        saved_eval_scores_dict: path of a JSON file to read the eval-score table from
            and write it to, so a second run (or a resumed one) skips evaluations.
        compare_plans: also build the plan with the least *summed* per-layer score loss
            (:func:`tfcompress.select.min_loss_select`), score it and the threshold plan on the
            whole model (kernels swapped in place; for channel pruning, each plan masked into the
            working copy) and keep the better: at most two more evaluations, none when both plans
            agree. ``False`` keeps the threshold plan alone, as AIMET does.
        allow_unreachable: when the target cannot be reached, return the most-compressed plan (with a warning and
            a note in the stats) instead of raising :class:`tfcompress.TargetUnreachableError`.
        max_score_drop: an accuracy target: the largest drop of the whole model's score below the baseline that is
            accepted (in the eval callback's units, e.g. 0.01 = one point of accuracy). With
            ``target_comp_ratio=None`` the cheapest plan is searched whose whole-model score stays within it:
            candidate plans are derived from the score table at goal ratios found by bisection and each is scored
            on the whole model (``stats.whole_model_evaluations`` says how many; the two-plan check is not used).
            With both given, the target ratio is reached as usual and a compressed model whose score dropped by
            more than ``max_score_drop`` raises ``ValueError``. At least one of the two must be given.

    Example:
        >>> GreedySelectionParameters(target_comp_ratio=0.5).num_comp_ratio_candidates
        10
        >>> GreedySelectionParameters(target_comp_ratio=None, max_score_drop=0.01).max_score_drop
        0.01
    """

    target_comp_ratio: float | None
    num_comp_ratio_candidates: int = 10
    use_monotonic_fit: bool = False
    saved_eval_scores_dict: str | os.PathLike | None = None
    compare_plans: bool = True
    allow_unreachable: bool = False
    max_score_drop: float | None = None

    def __post_init__(self) -> None:
        if self.max_score_drop is not None:
            drop = self.max_score_drop
            if not is_real(drop):
                raise TypeError(f"`max_score_drop` must be a number >= 0 or None, got {drop!r}.")
            if not math.isfinite(float(drop)) or float(drop) < 0:
                raise ValueError(f"`max_score_drop` must be a finite number >= 0, got {drop!r}.")
            self.max_score_drop = float(drop)
        if self.target_comp_ratio is None:
            if self.max_score_drop is None:
                raise ValueError(
                    "GreedySelectionParameters needs target_comp_ratio (a cost ratio to reach), max_score_drop (an "
                    "accuracy target: the cheapest plan within that score drop), or both."
                )
        else:
            self.target_comp_ratio = _check_ratio(self.target_comp_ratio, "target_comp_ratio")
        if not isinstance(self.compare_plans, bool):
            raise TypeError(f"`compare_plans` must be True or False, got {self.compare_plans!r}.")
        if not isinstance(self.allow_unreachable, bool):
            raise TypeError(f"`allow_unreachable` must be True or False, got {self.allow_unreachable!r}.")
        n = self.num_comp_ratio_candidates
        if not is_int(n) or n < 2:
            raise ValueError(f"`num_comp_ratio_candidates` must be an int >= 2, got {n!r}.")
        self.num_comp_ratio_candidates = int(n)
        if self.saved_eval_scores_dict is not None and not isinstance(self.saved_eval_scores_dict, str | os.PathLike):
            raise TypeError(
                "`saved_eval_scores_dict` must be a path to a JSON file (or None), got "
                f"{type(self.saved_eval_scores_dict).__name__}."
            )

    @property
    def candidates(self) -> list[float]:
        """The candidate ratios ``i/N``, ``i = 1..N-1``."""
        n = self.num_comp_ratio_candidates
        return [round(i / n, 6) for i in range(1, n)]


@dataclass
class TarRankSelectionParameters:
    """TAR selection: all layers at the same relative reconstruction residual ``i/N``.

    Args:
        num_rank_indices: ``N``; for index ``i`` each layer takes the rank whose
            ``||W - W_r|| / ||W||`` is closest to ``i/N``.
        target_comp_ratio: whole-model cost ratio to reach (``None``: take it from
            the greedy parameters if given; required otherwise).

    Example:
        >>> TarRankSelectionParameters(num_rank_indices=20, target_comp_ratio=0.5).num_rank_indices
        20
    """

    num_rank_indices: int
    target_comp_ratio: float | None = None

    def __post_init__(self) -> None:
        n = self.num_rank_indices
        if not is_int(n) or n < 2:
            raise ValueError(f"`num_rank_indices` must be an int >= 2, got {n!r}.")
        self.num_rank_indices = int(n)
        if self.target_comp_ratio is not None:
            self.target_comp_ratio = _check_ratio(self.target_comp_ratio, "target_comp_ratio")


def _pairs(items: Any) -> list[tuple[Any, float]]:
    """Accept [(layer_or_name, ratio), ...], {name: ratio} or objects with .module/.layer and .comp_ratio."""
    if isinstance(items, Mapping):
        items = list(items.items())
    if not isinstance(items, Iterable) or isinstance(items, str | bytes):
        raise TypeError("ManualModeParams expects a list of (layer_or_name, comp_ratio) pairs or a {name: ratio} dict.")
    pairs = []
    for item in items:
        if isinstance(item, tuple | list) and len(item) == 2:
            layer, ratio = item
        elif hasattr(item, "comp_ratio"):
            layer = getattr(item, "module", getattr(item, "layer", None))
            ratio = item.comp_ratio
        else:
            raise TypeError(f"ManualModeParams: each entry must be a (layer_or_name, comp_ratio) pair, got {item!r}.")
        name = getattr(layer, "name", layer)
        pairs.append((layer, _check_ratio(ratio, f"comp_ratio of '{name}'")))
    if not pairs:
        raise ValueError("ManualModeParams: the list of (layer, comp_ratio) pairs is empty.")
    return pairs


#: sampled positions per layer when the data-aware factors are asked for without a number
DEFAULT_RECONSTRUCTION_SAMPLES = 2000


def _checked_data(owner: str, data: Any) -> Any:
    """``data`` as the parameters keep it, refused with a TypeError naming ``owner`` when it is no model inputs."""
    if data is None or isinstance(data, str | bytes) or is_real(data):
        raise TypeError(
            f"{owner}: data must be model inputs (a numpy array or a tf.data.Dataset of batches), got {data!r}."
        )
    from .pruning.sampling import check_data_form

    check_data_form(data, f"{owner}.data")
    return data


def _checked_samples(owner: str, n: Any) -> int:
    if not is_int(n) or n < 1:
        raise ValueError(f"{owner}: num_reconstruction_samples must be an int >= 1, got {n!r}.")
    return int(n)


class _SchemeParameters:
    """Shared shape of WeightSvdParameters / SpatialSvdParameters / TuckerParameters.

    ``data`` (keyword): model inputs, in the forms ``ChannelPruningParameters.data`` takes; when given, every
    decomposed layer's factors are fitted to the layer's real inputs (sampled at ``num_reconstruction_samples``
    output positions per layer) instead of to its kernel alone, see :mod:`tfcompress.data_aware`. ``None`` (the
    default): the data-free truncated SVD / HOSVD of the kernel.
    """

    scheme_name = ""

    class AutoModeParams:
        """Auto mode: search the per-layer ratios.

        Accepts AIMET's PyTorch form ``AutoModeParams(rank_select_scheme, select_params,
        modules_to_ignore)`` and its Keras form ``AutoModeParams(select_params,
        modules_to_ignore)``.

        Example:
            >>> import tfcompress as tfc
            >>> p = tfc.SpatialSvdParameters.AutoModeParams(tfc.GreedySelectionParameters(0.5), modules_to_ignore=["conv1"])
            >>> p.rank_select_scheme
            <RankSelectScheme.greedy: 'greedy'>
        """

        def __init__(
            self,
            *args: Any,
            rank_select_scheme: RankSelectScheme | str | None = None,
            select_params: GreedySelectionParameters | TarRankSelectionParameters | None = None,
            modules_to_ignore: Iterable[Any] | None = None,
        ) -> None:
            args = list(args)
            if args and isinstance(args[0], RankSelectScheme | str):
                if rank_select_scheme is not None:
                    raise TypeError("AutoModeParams: rank_select_scheme given twice.")
                rank_select_scheme = args.pop(0)
            if args and isinstance(args[0], GreedySelectionParameters | TarRankSelectionParameters):
                if select_params is not None:
                    raise TypeError("AutoModeParams: select_params given twice.")
                select_params = args.pop(0)
            if args and modules_to_ignore is None and (args[0] is None or isinstance(args[0], Iterable)):
                modules_to_ignore = args.pop(0)
            if args:
                raise TypeError(f"AutoModeParams: unexpected arguments {args!r}.")
            if select_params is None:
                raise TypeError(
                    "AutoModeParams needs select_params: GreedySelectionParameters(target_comp_ratio=...) or "
                    "TarRankSelectionParameters(num_rank_indices=...)."
                )
            if not isinstance(select_params, GreedySelectionParameters | TarRankSelectionParameters):
                raise TypeError(
                    "AutoModeParams: select_params must be GreedySelectionParameters or TarRankSelectionParameters, "
                    f"got {type(select_params).__name__}."
                )
            inferred = (
                RankSelectScheme.greedy
                if isinstance(select_params, GreedySelectionParameters)
                else RankSelectScheme.tar
            )
            scheme = (
                inferred
                if rank_select_scheme is None
                else coerce_enum(rank_select_scheme, RankSelectScheme, "rank_select_scheme")
            )
            if scheme is not inferred:
                raise ValueError(
                    f"AutoModeParams: rank_select_scheme={scheme.value!r} does not match select_params of type "
                    f"{type(select_params).__name__}."
                )
            if scheme is RankSelectScheme.tar and select_params.target_comp_ratio is None:
                raise ValueError(
                    "AutoModeParams: TarRankSelectionParameters needs target_comp_ratio for compress_model."
                )
            if isinstance(modules_to_ignore, str):
                modules_to_ignore = [modules_to_ignore]
            self.rank_select_scheme = scheme
            self.select_params = select_params
            self.modules_to_ignore = list(modules_to_ignore or [])

        @property
        def target_comp_ratio(self) -> float | None:
            target = self.select_params.target_comp_ratio
            return None if target is None else float(target)

        def __repr__(self) -> str:
            return (
                f"AutoModeParams(rank_select_scheme={self.rank_select_scheme.value!r}, select_params={self.select_params!r}, "
                f"modules_to_ignore={[getattr(m, 'name', m) for m in self.modules_to_ignore]!r})"
            )

    class ManualModeParams:
        """Manual mode: the user gives the ratio of each layer to compress.

        Example:
            >>> import tfcompress as tfc
            >>> p = tfc.WeightSvdParameters.ManualModeParams([("conv2d_1", 0.5), ("dense", 0.25)])
            >>> p.list_of_module_comp_ratio_pairs
            [('conv2d_1', 0.5), ('dense', 0.25)]
        """

        def __init__(self, list_of_module_comp_ratio_pairs: Any) -> None:
            self.list_of_module_comp_ratio_pairs = _pairs(list_of_module_comp_ratio_pairs)

        def __repr__(self) -> str:
            pairs = [(getattr(m, "name", m), r) for m, r in self.list_of_module_comp_ratio_pairs]
            return f"ManualModeParams({pairs!r})"

    def __init__(
        self,
        mode: Mode | str,
        params: Any,
        multiplicity: int = 1,
        *,
        data: Any = None,
        num_reconstruction_samples: int = DEFAULT_RECONSTRUCTION_SAMPLES,
    ) -> None:
        owner = type(self).__name__
        self.data = None if data is None else _checked_data(owner, data)
        self.num_reconstruction_samples = _checked_samples(owner, num_reconstruction_samples)
        self.mode = coerce_enum(mode, Mode, "mode")
        expected = self.AutoModeParams if self.mode is Mode.auto else self.ManualModeParams
        if not isinstance(params, _SchemeParameters.AutoModeParams | _SchemeParameters.ManualModeParams):
            raise TypeError(
                f"{type(self).__name__}: params must be {type(self).__name__}.{expected.__name__}(...), got {type(params).__name__}."
            )
        if self.mode is Mode.auto and not isinstance(params, _SchemeParameters.AutoModeParams):
            raise ValueError(
                f"{type(self).__name__}: mode is auto but params are ManualModeParams; use AutoModeParams."
            )
        if self.mode is Mode.manual and not isinstance(params, _SchemeParameters.ManualModeParams):
            raise ValueError(
                f"{type(self).__name__}: mode is manual but params are AutoModeParams; use ManualModeParams."
            )
        if not is_int(multiplicity) or multiplicity < 1:
            raise ValueError(f"{type(self).__name__}: multiplicity must be an int >= 1, got {multiplicity!r}.")
        self.params = params
        self.multiplicity = int(multiplicity)

    @property
    def data_aware(self) -> bool:
        """Whether the factors are fitted to data (``data`` was given)."""
        return self.data is not None

    def __repr__(self) -> str:
        data = ""
        if self.data is not None:
            data = f", data=<{type(self.data).__name__}>, num_reconstruction_samples={self.num_reconstruction_samples}"
        return (
            f"{type(self).__name__}(mode={self.mode.value!r}, params={self.params!r}, "
            f"multiplicity={self.multiplicity}{data})"
        )


class WeightSvdParameters(_SchemeParameters):
    """Parameters for ``CompressionScheme.weight_svd`` (Conv2D, Conv1D, Conv2DTranspose, the pointwise kernel of
    SeparableConv2D, and Dense layers).

    Args:
        mode, params, multiplicity: auto mode (``AutoModeParams``) or manual mode (``ManualModeParams``); ranks
            are rounded to a multiple of ``multiplicity``.
        data: model inputs (keyword; the forms ``ChannelPruningParameters.data`` takes: an array with the batch
            axis first, ``(x, y)``, ``(x, y, weights)`` or a ``tf.data.Dataset``). When given, the factors are
            fitted to each layer's real inputs (data-aware: they minimise the layer's output error on the
            sampled inputs, not the kernel error; the final model is refitted in forward order so each layer
            reproduces the original outputs from the compressed model's inputs). ``None``: data-free factors.
        num_reconstruction_samples: sampled output positions per layer for the data-aware fits.

    Example:
        >>> import tfcompress as tfc
        >>> p = tfc.WeightSvdParameters(tfc.Mode.auto,
        ...     tfc.WeightSvdParameters.AutoModeParams(tfc.RankSelectScheme.greedy,
        ...                                            tfc.GreedySelectionParameters(target_comp_ratio=0.5)),
        ...     multiplicity=8)
        >>> p.multiplicity, p.data_aware
        (8, False)
        >>> import numpy as np
        >>> tfc.WeightSvdParameters("manual", tfc.WeightSvdParameters.ManualModeParams({"conv": 0.5}),
        ...                         data=np.zeros((8, 4, 4, 1)), num_reconstruction_samples=500).data_aware
        True
    """

    scheme_name = "weight_svd"


class SpatialSvdParameters(_SchemeParameters):
    """Parameters for ``CompressionScheme.spatial_svd`` (Conv2D and Conv1D layers with a kernel larger than 1x1).

    Example:
        >>> import tfcompress as tfc
        >>> p = tfc.SpatialSvdParameters(tfc.Mode.manual, tfc.SpatialSvdParameters.ManualModeParams([("conv", 0.5)]))
        >>> p.mode
        <Mode.manual: 'manual'>
    """

    scheme_name = "spatial_svd"


class TuckerParameters(_SchemeParameters):
    """Parameters for ``CompressionScheme.tucker`` (Tucker-2 of Conv2D layers).

    Example:
        >>> import tfcompress as tfc
        >>> p = tfc.TuckerParameters("manual", tfc.TuckerParameters.ManualModeParams({"conv": 0.4}))
        >>> p.params.list_of_module_comp_ratio_pairs
        [('conv', 0.4)]
    """

    scheme_name = "tucker"


class AutoSchemeParameters(_SchemeParameters):
    """Parameters for ``CompressionScheme.auto``: per layer and candidate ratio, the best of weight SVD,
    spatial SVD and Tucker-2 (Dense layers: SVD).

    Args:
        mode, params, multiplicity: as for the other schemes (greedy auto mode or manual mode).
        data_free: choose each layer's variant by the least relative reconstruction error
            ``||W - W_r|| / ||W||`` instead of the eval score (no extra evaluations for the choice).
        data, num_reconstruction_samples: model inputs to fit every variant's factors to (data-aware factors,
            see :class:`WeightSvdParameters`); ``None``: data-free factors.

    Example:
        >>> p = AutoSchemeParameters("manual", AutoSchemeParameters.ManualModeParams({"conv": 0.5}), data_free=True)
        >>> p.data_free, p.multiplicity
        (True, 1)
    """

    scheme_name = "auto"

    def __init__(
        self,
        mode: Mode | str,
        params: Any,
        multiplicity: int = 1,
        *,
        data_free: bool = False,
        data: Any = None,
        num_reconstruction_samples: int = DEFAULT_RECONSTRUCTION_SAMPLES,
    ) -> None:
        super().__init__(mode, params, multiplicity, data=data, num_reconstruction_samples=num_reconstruction_samples)
        if not isinstance(data_free, bool):
            raise TypeError(f"AutoSchemeParameters: data_free must be True or False, got {data_free!r}.")
        self.data_free = data_free

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", data_free={self.data_free})"


class ChannelPruningParameters(_SchemeParameters):
    """Parameters for ``CompressionScheme.channel_pruning``: input channels of Conv2D/Dense/SeparableConv2D
    layers removed.

    A layer's ratio is the fraction of its input channels kept (rounded to
    ``multiplicity``, at least 1). Channels that several layers share (a residual
    ``Add``, a ``Concatenate``, fan-out) are pruned together as one group, named
    after the group's first consumer layer.

    Args:
        data: model inputs to sample activations from: a numpy array (or tensor) with
            the batch axis first, a tuple ``(x, y)`` or ``(x, y, weights)``, or a
            ``tf.data.Dataset`` of batches (elements ``x``, ``(x, y)`` or ``(x, y, weights)``);
            labels are ignored. A list is refused: ``[a, b]`` could be two input arrays or
            inputs and labels. Inputs (and the activations they give) must be finite.
        num_reconstruction_samples: how many output positions per layer (randomly drawn
            over images and pixels, about 8 per image) feed the channel choice and the
            least-squares reconstruction. Use more than the number of kept weights per
            output (``kh*kw*kept``) for a well-determined fit.
        allow_custom_downsample_ops: where the channels cannot be removed upstream (they
            come from a model input, reach a model output, or pass through a layer that
            mixes channels), insert a :class:`tfcompress.layers.ChannelGather` before the
            layer instead of skipping it.
        mode, params, multiplicity: as for the other schemes (``Mode.auto`` with greedy
            selection, or ``Mode.manual`` with ``(layer, kept_fraction)`` pairs).
        channel_selection: ``"greedy"`` (data-driven: the channels whose loss the
            least-squares refit can absorb best, see :func:`tfcompress.pruning.channel_order`)
            or ``"magnitude"`` (largest kernel L2 norm per input channel, data-free).
        reconstruct: refit the kept weights (and bias) by least squares; ``False`` just
            drops the channels (for comparison).
        seed: seed of the sampled positions.

    Example:
        >>> import numpy as np, tfcompress as tfc
        >>> x = np.zeros((16, 8, 8, 1), "float32")
        >>> p = tfc.ChannelPruningParameters(x, 500, False, tfc.Mode.manual,
        ...     tfc.ChannelPruningParameters.ManualModeParams([("conv2", 0.5)]))
        >>> p.num_reconstruction_samples, p.channel_selection
        (500, 'greedy')
    """

    scheme_name = "channel_pruning"

    def __init__(
        self,
        data: Any,
        num_reconstruction_samples: int,
        allow_custom_downsample_ops: bool,
        mode: Mode | str,
        params: Any,
        multiplicity: int = 1,
        *,
        channel_selection: str = "greedy",
        reconstruct: bool = True,
        seed: int = 0,
    ) -> None:
        _checked_data("ChannelPruningParameters", data)  # required here: checked before anything else
        super().__init__(mode, params, multiplicity, data=data, num_reconstruction_samples=num_reconstruction_samples)
        for name, value in (("allow_custom_downsample_ops", allow_custom_downsample_ops), ("reconstruct", reconstruct)):
            if not isinstance(value, bool):
                raise TypeError(f"ChannelPruningParameters: {name} must be True or False, got {value!r}.")
        if channel_selection not in ("greedy", "magnitude"):
            raise ValueError(
                f"ChannelPruningParameters: channel_selection must be 'greedy' or 'magnitude', got {channel_selection!r}."
            )
        if not is_int(seed):
            raise TypeError(f"ChannelPruningParameters: seed must be an int, got {seed!r}.")
        seed = int(seed)
        self.allow_custom_downsample_ops = allow_custom_downsample_ops
        self.channel_selection = channel_selection
        self.reconstruct = reconstruct
        self.seed = seed

    def __repr__(self) -> str:
        return (
            f"ChannelPruningParameters(data=<{type(self.data).__name__}>, num_reconstruction_samples="
            f"{self.num_reconstruction_samples}, allow_custom_downsample_ops={self.allow_custom_downsample_ops}, "
            f"mode={self.mode.value!r}, params={self.params!r}, multiplicity={self.multiplicity}, "
            f"channel_selection={self.channel_selection!r}, reconstruct={self.reconstruct})"
        )


# AIMET's classes are distinct per scheme; nested params of one scheme work with the others too.
for _cls in (
    WeightSvdParameters,
    SpatialSvdParameters,
    TuckerParameters,
    AutoSchemeParameters,
    ChannelPruningParameters,
):
    _cls.AutoModeParams = type(
        "AutoModeParams",
        (_SchemeParameters.AutoModeParams,),
        {"__doc__": _SchemeParameters.AutoModeParams.__doc__, "__qualname__": f"{_cls.__name__}.AutoModeParams"},
    )
    _cls.ManualModeParams = type(
        "ManualModeParams",
        (_SchemeParameters.ManualModeParams,),
        {"__doc__": _SchemeParameters.ManualModeParams.__doc__, "__qualname__": f"{_cls.__name__}.ManualModeParams"},
    )
del _cls
