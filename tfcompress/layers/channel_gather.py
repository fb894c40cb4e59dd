"""``ChannelGather``: keep chosen channels of the last axis.

Channel pruning inserts it in front of a ``Conv2D``/``Dense`` whose input channels
cannot be removed upstream (they come from the model input, a ``Flatten``, a layer
that also feeds a model output, ...): the layer then reads only the kept channels
and its kernel shrinks, while everything upstream stays as it was. It has no
weights and costs no MACs (a gather is a copy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

__all__ = ["ChannelGather"]


def _check_indices(indices: Any, name: str | None) -> list[int]:
    where = f"ChannelGather '{name}'" if name else "ChannelGather"
    try:
        values = np.asarray(indices)
    except (TypeError, ValueError):
        values = np.asarray([object()])
    if values.dtype == bool or values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{where}: indices must be a non-empty list of channel indices (ints), got {indices!r}.")
    if values.min() < 0 or len(np.unique(values)) != values.size:
        raise ValueError(f"{where}: indices must be distinct non-negative ints, got {indices!r}.")
    return [int(v) for v in values]


@keras.saving.register_keras_serializable(package="tfcompress")
class ChannelGather(keras.layers.Layer):
    """Output the channels ``indices`` (in that order) of the input's last axis.

    Args:
        indices: distinct non-negative channel indices, each smaller than the input's
            channel count.
        **kwargs: the usual layer arguments (``name``, ``dtype``, ...).

    Example:
        >>> import numpy as np
        >>> layer = ChannelGather([0, 2], name="pick")
        >>> x = np.arange(6.0).reshape(1, 2, 3)
        >>> np.asarray(layer(x)).tolist()
        [[[0.0, 2.0], [3.0, 5.0]]]
        >>> layer.compute_output_shape((None, 8, 8, 3))
        (None, 8, 8, 2)
    """

    def __init__(self, indices: Sequence[int] | np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.indices = _check_indices(indices, kwargs.get("name"))

    def build(self, input_shape: Sequence[int | None]) -> None:
        channels = input_shape[-1]
        if channels is not None and max(self.indices) >= int(channels):
            raise ValueError(
                f"ChannelGather '{self.name}': index {max(self.indices)} is out of range for an input with "
                f"{int(channels)} channels; give indices in 0..{int(channels) - 1}."
            )
        super().build(input_shape)

    def call(self, inputs: Any) -> Any:
        return keras.ops.take(inputs, np.asarray(self.indices, dtype="int32"), axis=-1)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        return (*tuple(input_shape)[:-1], len(self.indices))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "indices": list(self.indices)}
