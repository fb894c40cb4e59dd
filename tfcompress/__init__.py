"""tfcompress: make trained Keras 3 models cheaper by low-rank decomposition and channel pruning.

Example:
    >>> import keras, tfcompress as tfc
    >>> model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(32, 3, name="conv"),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    >>> rank = tfc.rank_for_ratio(model.get_layer("conv"), 0.5, "spatial_svd", "mac")
    >>> small = tfc.rewrite_model(model, {"conv": rank}, scheme=tfc.CompressionScheme.spatial_svd)
    >>> tfc.model_cost(small).macs < tfc.model_cost(model).macs
    True
"""

from .compress import ModelChangedError, ModelCompressor, compress_model
from .cost import model_cost, rank_for_ratio
from .enums import CompressionScheme, CostMetric, Mode, RankSelectScheme
from .latency import LatencyOptions
from .layers import ChannelGather, SpatialSVDConv2D, SVDDense, TuckerConv2D, WeightSVDConv2D
from .params import (
    AutoSchemeParameters,
    ChannelPruningParameters,
    GreedySelectionParameters,
    SpatialSvdParameters,
    TarRankSelectionParameters,
    TuckerParameters,
    WeightSvdParameters,
)
from .report import report
from .rewrite import rewrite_model
from .stats import CompressionStats, LayerStats
from .train import FitTrainer
from .workflow import SvdThenPruneResult, svd_then_prune

__version__ = "0.1.0"

__all__ = [
    "AutoSchemeParameters",
    "ChannelGather",
    "ChannelPruningParameters",
    "SvdThenPruneResult",
    "CompressionScheme",
    "CompressionStats",
    "FitTrainer",
    "GreedySelectionParameters",
    "LatencyOptions",
    "LayerStats",
    "ModelChangedError",
    "ModelCompressor",
    "SpatialSvdParameters",
    "TarRankSelectionParameters",
    "TuckerParameters",
    "WeightSvdParameters",
    "compress_model",
    "CostMetric",
    "Mode",
    "RankSelectScheme",
    "SVDDense",
    "SpatialSVDConv2D",
    "TuckerConv2D",
    "WeightSVDConv2D",
    "model_cost",
    "rank_for_ratio",
    "report",
    "rewrite_model",
    "svd_then_prune",
]
