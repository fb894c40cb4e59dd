"""``TuckerConv2D``: Tucker-2 decomposition of a ``Conv2D`` over its channel modes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from .. import decompose
from .base import DecomposedConv2D

__all__ = ["TuckerConv2D"]


@keras.saving.register_keras_serializable(package="tfcompress")
class TuckerConv2D(DecomposedConv2D):
    """Tucker-2 decomposition of a ``Conv2D``: 1x1 ``C -> r_in``, ``kh x kw`` ``r_in -> r_out``, 1x1 ``r_out -> N``.

    The core convolution keeps the original strides, padding and dilation; the
    last 1x1 convolution carries the bias and activation. The factors come from
    the HOSVD of the kernel's two channel modes, refined by ``hooi_iterations``
    rounds of higher-order orthogonal iteration (default 2). Ranks are at most
    ``(C, N)``; at full ranks the output equals the original's.

    Example:
        >>> import keras, tfcompress as tfc
        >>> conv = keras.layers.Conv2D(32, 3, padding="same")
        >>> conv.build((None, 16, 16, 24))
        >>> layer = tfc.TuckerConv2D.from_layer(conv, ranks=(8, 12))
        >>> tuple(layer(keras.ops.zeros((1, 16, 16, 24))).shape)
        (1, 16, 16, 32)
    """

    scheme = "tucker"

    def __init__(
        self, filters: int, kernel_size: Any, ranks: Sequence[int], hooi_iterations: int = 2, **kwargs: Any
    ) -> None:
        super().__init__(filters, kernel_size, **kwargs)
        if isinstance(ranks, int | np.integer):
            ranks = (int(ranks), int(ranks))
        ranks = tuple(int(r) for r in ranks)
        if len(ranks) != 2 or min(ranks) < 1:
            raise ValueError(f"TuckerConv2D '{self.name}': ranks must be a pair of ints >= 1, got {ranks}.")
        self.ranks = ranks
        self.hooi_iterations = int(hooi_iterations)

    @property
    def rank(self) -> tuple[int, int]:
        """The pair ``(r_in, r_out)``."""
        return self.ranks

    @staticmethod
    def max_rank_for(kernel_shape: tuple[int, int, int, int]) -> tuple[int, int]:
        """Largest meaningful ranks for a ``(kh, kw, C, N)`` kernel: ``(C, N)``."""
        return (kernel_shape[2], kernel_shape[3])

    def _rank_config(self) -> dict[str, Any]:
        return {"ranks": self.ranks, "hooi_iterations": self.hooi_iterations}

    def _check_rank(self, in_channels: int) -> None:
        if self.ranks[0] > in_channels or self.ranks[1] > self.filters:
            raise ValueError(
                f"TuckerConv2D '{self.name}': ranks {self.ranks} exceed the maximum ({in_channels}, {self.filters})."
            )

    def _factor_shapes(self, in_channels: int) -> dict[str, tuple[int, ...]]:
        kh, kw = self.kernel_size
        r_in, r_out = self.ranks
        return {
            "kernel_in": (1, 1, in_channels, r_in),
            "kernel_core": (kh, kw, r_in, r_out),
            "kernel_out": (1, 1, r_out, self.filters),
        }

    def _stages(self) -> list:
        return [
            (self.kernel_in, (1, 1), "valid", (1, 1)),
            (self.kernel_core, self.strides, self.padding, self.dilation_rate),
            (self.kernel_out, (1, 1), "valid", (1, 1)),
        ]

    def _factorize(self, kernel: np.ndarray) -> list[np.ndarray]:
        return list(decompose.tucker2_factors(kernel, self.ranks, hooi_iterations=self.hooi_iterations))

    def _compose(self, factors: list[np.ndarray]) -> np.ndarray:
        return decompose.tucker2_compose(*factors)

    @classmethod
    def from_layer(cls, layer: keras.layers.Conv2D, ranks: Sequence[int], hooi_iterations: int = 2) -> TuckerConv2D:
        """A built ``TuckerConv2D`` with the Tucker-2 factors of ``layer`` at ``ranks=(r_in, r_out)``.

        Example:
            >>> import keras, tfcompress as tfc
            >>> conv = keras.layers.Conv2D(16, 3)
            >>> conv.build((None, 8, 8, 4))
            >>> tfc.TuckerConv2D.from_layer(conv, ranks=(4, 16)).ranks
            (4, 16)
        """
        return cls._build_from(layer, ranks=ranks, hooi_iterations=hooi_iterations)
