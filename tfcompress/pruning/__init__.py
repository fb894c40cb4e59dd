"""Channel pruning: choose input channels, refit the kept weights, and winnow the producers upstream.

- :mod:`.select` (numpy): :func:`magnitude_channels`, :func:`greedy_channels`, :func:`channel_order`.
- :mod:`.reconstruct` (numpy): :func:`extract_patches`, :func:`reconstruct_weights`.
- :mod:`.kinds` (Keras): how channels cross each layer (producer, per-channel, pass-through, merge, ...).
- :mod:`.groups` (Keras): :func:`prune_units`, the dependency groups of channels.
- :mod:`.rebuild` (Keras): :func:`apply_pruning`, :func:`kept_channels`: the smaller model, for real.
- :mod:`.winnow` (Keras): :func:`prune_input_channels`, :func:`prunable_layers`, :func:`find_chain`.
- :mod:`.driver`: the ``channel_pruning`` scheme of :func:`tfcompress.compress_model`.
- :mod:`.ffn`, :mod:`.ffn_fit` (Keras): :func:`prune_ffn`, FFN hidden units inside custom layers (transformer blocks).

Example:
    >>> import numpy as np
    >>> from tfcompress.pruning import magnitude_channels
    >>> magnitude_channels(np.arange(8.0).reshape(4, 2), 2)
    array([2, 3])
"""

from tfcompress.pruning.ffn_fit import prune_ffn
from tfcompress.pruning.reconstruct import (
    all_positions,
    conv_output_size,
    extract_patches,
    reconstruct_weights,
    sample_positions,
)
from tfcompress.pruning.select import (
    ChannelProblem,
    channel_order,
    greedy_channels,
    magnitude_channels,
    reconstruction_error,
)
from tfcompress.pruning.winnow import (
    ChannelChain,
    ChannelSlot,
    KeptChannels,
    PruneResult,
    PruneUnit,
    apply_pruning,
    find_chain,
    kept_channels,
    prunable_layers,
    prune_input_channels,
    prune_units,
)

__all__ = [
    "ChannelProblem",
    "channel_order",
    "ChannelChain",
    "ChannelSlot",
    "KeptChannels",
    "PruneResult",
    "PruneUnit",
    "apply_pruning",
    "all_positions",
    "conv_output_size",
    "extract_patches",
    "find_chain",
    "kept_channels",
    "greedy_channels",
    "magnitude_channels",
    "prunable_layers",
    "prune_input_channels",
    "prune_units",
    "prune_ffn",
    "reconstruct_weights",
    "reconstruction_error",
    "sample_positions",
]
