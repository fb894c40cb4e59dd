"""Decomposed Keras layers (and the pruning helper ``ChannelGather``), one per file; each is registered as
``tfcompress>ClassName``."""

from .channel_gather import ChannelGather
from .rewired_layer import RewiredLayer
from .rewired_model import RewiredModel
from .spatial_svd_conv1d import SpatialSVDConv1D
from .spatial_svd_conv2d import SpatialSVDConv2D
from .svd_dense import SVDDense
from .svd_einsum_dense import SVDEinsumDense
from .svd_separable_conv2d import SVDSeparableConv2D
from .tucker_conv2d import TuckerConv2D
from .weight_svd_conv1d import WeightSVDConv1D
from .weight_svd_conv2d import WeightSVDConv2D
from .weight_svd_conv2d_transpose import WeightSVDConv2DTranspose

__all__ = [
    "ChannelGather",
    "RewiredLayer",
    "RewiredModel",
    "SVDDense",
    "SVDEinsumDense",
    "SVDSeparableConv2D",
    "SpatialSVDConv1D",
    "SpatialSVDConv2D",
    "TuckerConv2D",
    "WeightSVDConv1D",
    "WeightSVDConv2D",
    "WeightSVDConv2DTranspose",
]
