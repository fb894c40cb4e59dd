"""Decomposed Keras layers (and the pruning helper ``ChannelGather``), one per file; each is registered as
``tfcompress>ClassName``."""

from .channel_gather import ChannelGather
from .spatial_svd_conv2d import SpatialSVDConv2D
from .svd_dense import SVDDense
from .tucker_conv2d import TuckerConv2D
from .weight_svd_conv2d import WeightSVDConv2D

__all__ = ["ChannelGather", "SVDDense", "SpatialSVDConv2D", "TuckerConv2D", "WeightSVDConv2D"]
