"""tfcompress: make trained Keras 3 models cheaper by low-rank decomposition and channel pruning.

``import tfcompress`` imports the toolkit and registers its layers with Keras, so a saved
compressed model loads with ``keras.models.load_model`` afterwards. The one exception is the
start of the command line (the ``tfcompress`` script or ``python -m tfcompress``): there the
public names below are imported on first use, so ``tfcompress --help`` answers without
importing TensorFlow; the commands that need the layers import them themselves.

Example:
    >>> import keras, tfcompress as tfc
    >>> model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(32, 3, name="conv"),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    >>> rank = tfc.rank_for_ratio(model.get_layer("conv"), 0.5, "spatial_svd", "mac")
    >>> small = tfc.rewrite_model(model, {"conv": rank}, scheme=tfc.CompressionScheme.spatial_svd)
    >>> tfc.model_cost(small).macs < tfc.model_cost(model).macs
    True
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from .compress import ModelChangedError, ModelCompressor, compress_model
    from .cost import model_cost, rank_for_ratio
    from .enums import CompressionScheme, CostMetric, Mode, RankSelectScheme
    from .errors import TargetUnreachableError
    from .latency import LatencyOptions
    from .layers import (
        ChannelGather,
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
    from .params import (
        AutoSchemeParameters,
        ChannelPruningParameters,
        GreedySelectionParameters,
        SpatialSvdParameters,
        TarRankSelectionParameters,
        TuckerParameters,
        WeightSvdParameters,
    )
    from .pipeline import LocalExecutor
    from .pipeline.ray_executor import RayExecutor
    from .report import report
    from .rewrite import rewrite_model
    from .stats import CompressionStats, LayerStats
    from .train import FitTrainer
    from .workflow import SvdThenPruneResult, svd_then_prune

# public name -> the module that defines it
_PUBLIC = {
    "ModelChangedError": "compress",
    "ModelCompressor": "compress",
    "compress_model": "compress",
    "TargetUnreachableError": "errors",
    "model_cost": "cost",
    "rank_for_ratio": "cost",
    "CompressionScheme": "enums",
    "CostMetric": "enums",
    "Mode": "enums",
    "RankSelectScheme": "enums",
    "LatencyOptions": "latency",
    "LocalExecutor": "pipeline",
    "ChannelGather": "layers",
    "SpatialSVDConv1D": "layers",
    "SpatialSVDConv2D": "layers",
    "SVDDense": "layers",
    "SVDEinsumDense": "layers",
    "SVDSeparableConv2D": "layers",
    "TuckerConv2D": "layers",
    "WeightSVDConv1D": "layers",
    "WeightSVDConv2D": "layers",
    "WeightSVDConv2DTranspose": "layers",
    "AutoSchemeParameters": "params",
    "ChannelPruningParameters": "params",
    "GreedySelectionParameters": "params",
    "SpatialSvdParameters": "params",
    "TarRankSelectionParameters": "params",
    "TuckerParameters": "params",
    "WeightSvdParameters": "params",
    "RayExecutor": "pipeline.ray_executor",
    "report": "report",
    "rewrite_model": "rewrite",
    "CompressionStats": "stats",
    "LayerStats": "stats",
    "FitTrainer": "train",
    "SvdThenPruneResult": "workflow",
    "svd_then_prune": "workflow",
}

__all__ = [
    "AutoSchemeParameters",
    "ChannelGather",
    "ChannelPruningParameters",
    "CompressionScheme",
    "CompressionStats",
    "CostMetric",
    "FitTrainer",
    "GreedySelectionParameters",
    "LatencyOptions",
    "LayerStats",
    "LocalExecutor",
    "Mode",
    "ModelChangedError",
    "ModelCompressor",
    "RankSelectScheme",
    "RayExecutor",
    "SVDDense",
    "SVDEinsumDense",
    "SVDSeparableConv2D",
    "SpatialSVDConv1D",
    "SpatialSVDConv2D",
    "SpatialSvdParameters",
    "SvdThenPruneResult",
    "TarRankSelectionParameters",
    "TargetUnreachableError",
    "TuckerConv2D",
    "TuckerParameters",
    "WeightSVDConv1D",
    "WeightSVDConv2D",
    "WeightSVDConv2DTranspose",
    "WeightSvdParameters",
    "__version__",
    "compress_model",
    "model_cost",
    "rank_for_ratio",
    "report",
    "rewrite_model",
    "svd_then_prune",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (only reached while the command line starts)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'tfcompress' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


def _starting_command_line() -> bool:
    """True while ``python -m tfcompress`` or the ``tfcompress`` script imports this package before its ``main``.

    Python sets ``sys.argv[0]`` to ``"-m"`` while it locates a ``-m`` module (documented for ``-m``),
    and a console script's ``sys.argv[0]`` is the script's own path.
    """
    first = sys.argv[0] if getattr(sys, "argv", None) else ""
    return first == "-m" or os.path.basename(first).removesuffix(".exe") == "tfcompress"


if not _starting_command_line():
    for _name in _PUBLIC:
        __getattr__(_name)  # imports everything now: this registers the layers with Keras
    del _name
