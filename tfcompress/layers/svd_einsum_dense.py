"""``SVDEinsumDense``: an ``EinsumDense`` split into two contractions through a rank-``r`` bottleneck."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from .. import einsum_unfold
from .base import _describe, build_for_factors

__all__ = ["SVDEinsumDense", "check_source_einsum_dense"]


def check_source_einsum_dense(layer: Any) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``layer`` is a plain, built ``EinsumDense`` whose equation splits
    into two contractions."""
    if not isinstance(layer, keras.layers.EinsumDense):
        raise TypeError(f"{_describe(layer)} is not a keras.layers.EinsumDense.")
    if type(layer).call is not keras.layers.EinsumDense.call:
        raise ValueError(
            f"{_describe(layer)} overrides EinsumDense.call; its function is unknown, so it cannot be decomposed."
        )
    if getattr(layer, "quantization_mode", None):
        raise ValueError(f"{_describe(layer)} is quantized; decompose the float model, then quantize.")
    problem = einsum_unfold.einsum_problem(layer.equation)
    if problem:
        raise ValueError(f"{_describe(layer)} cannot be split into two contractions: {problem}.")
    if not layer.built:
        raise ValueError(f"{_describe(layer)} is not built; build or call the model first.")


def _expand(spec: str, ndim: int) -> str:
    """``spec`` with its ellipsis replaced by upper-case placeholder letters for a tensor of ``ndim`` axes."""
    if "..." not in spec:
        return spec
    n = ndim - (len(spec) - 3)
    return spec.replace("...", "ABCDEFGHIJKLMNOPQRSTUVWXY"[:n])


@keras.saving.register_keras_serializable(package="tfcompress")
class SVDEinsumDense(keras.layers.Layer):
    """Low-rank ``EinsumDense``: ``einsum(second, einsum(first, x, A), B) + bias``, then the activation.

    The kernel of the ``EinsumDense`` is unfolded into an (input features) x (output features) matrix following
    its equation (:mod:`tfcompress.einsum_unfold`), and its truncated SVD gives ``A`` (input features..., r) and
    ``B`` (r, output features...). Exact at full rank (``min(in, out)``), the Frobenius-optimal rank-``r`` map below
    it. Bias (``bias_axes``) and activation are those of the original layer.

    Args:
        equation: the ``EinsumDense`` equation (``"abc,cde->abde"``).
        kernel_shape: shape of the ``EinsumDense`` kernel it approximates.
        rank: the bottleneck size, ``1 <= rank <= min(in, out)``.
        bias_axes, activation, kernel_initializer, bias_initializer: as in ``EinsumDense``.

    Example:
        >>> import keras, tfcompress as tfc
        >>> q = keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 4, 8), bias_axes="de")
        >>> q.build((None, 10, 32))
        >>> layer = tfc.SVDEinsumDense.from_layer(q, rank=32)
        >>> x = keras.random.normal((2, 10, 32))
        >>> bool(keras.ops.max(keras.ops.abs(layer(x) - q(x))) < 1e-4)
        True
    """

    scheme = "svd"

    def __init__(
        self,
        equation: str,
        kernel_shape: Sequence[int],
        rank: int,
        bias_axes: str | None = None,
        activation: Any = None,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        where = f"SVDEinsumDense '{self.name}'"
        try:
            self._split = einsum_unfold.einsum_split(equation)
        except ValueError as err:
            raise ValueError(f"{where}: the equation cannot be split into two contractions: {err}.") from None
        self.equation = str(equation).replace(" ", "")
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        if len(self.kernel_shape) != len(self._split.kernel_spec) or min(self.kernel_shape) < 1:
            raise ValueError(
                f"{where}: kernel_shape {self.kernel_shape} does not fit the kernel spec {self._split.kernel_spec!r}."
            )
        self.in_features, self.out_features = self._split.matrix_shape(self.kernel_shape)
        if isinstance(rank, bool) or int(rank) < 1:
            raise ValueError(f"{where}: rank must be >= 1, got {rank}.")
        self.rank = int(rank)
        bound = min(self.in_features, self.out_features)
        if self.rank > bound:
            raise ValueError(
                f"{where}: rank {self.rank} exceeds the maximum rank {bound} (min(in={self.in_features}, "
                f"out={self.out_features}))."
            )
        if bias_axes:
            missing = [c for c in bias_axes if c not in self._split.output_spec]
            if missing:
                raise ValueError(f"{where}: bias axis {missing[0]!r} is not in the output spec.")
        self.bias_axes = bias_axes or None
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    @staticmethod
    def max_rank_for(kernel_shape: tuple[int, ...], equation: str) -> int:
        """Largest meaningful rank: ``min(in, out)`` of the unfolding.

        Example:
            >>> SVDEinsumDense.max_rank_for((4, 2, 8), "abcd,cde->abe")
            8
        """
        return min(einsum_unfold.einsum_split(equation).matrix_shape(tuple(kernel_shape)))

    def _sizes(self) -> dict[str, int]:
        return dict(zip(self._split.kernel_spec, self.kernel_shape, strict=True))

    def build(self, input_shape: Sequence[int | None]) -> None:
        sizes = self._sizes()
        x_spec = _expand(self._split.input_spec, len(input_shape))
        for c, d in zip(x_spec, input_shape, strict=True):
            if c in sizes and d is not None and int(d) != sizes[c]:
                raise ValueError(
                    f"SVDEinsumDense '{self.name}': input axis {c!r} has size {d}, the kernel expects {sizes[c]}."
                )
        split = self._split
        self.kernel_a = self.add_weight(
            name="kernel_a",
            shape=(*(sizes[c] for c in split.summed), self.rank),
            initializer=self.kernel_initializer,
        )
        self.kernel_b = self.add_weight(
            name="kernel_b",
            shape=(self.rank, *(sizes[c] for c in split.produced)),
            initializer=self.kernel_initializer,
        )
        self.bias = None
        if self.bias_axes:
            self.bias = self.add_weight(
                name="bias", shape=self._bias_shape(input_shape), initializer=self.bias_initializer
            )

    def _output_sizes(self, input_shape: Sequence[int | None]) -> tuple[str, tuple[int | None, ...]]:
        sizes: dict[str, int | None] = dict(self._sizes())
        x_spec = _expand(self._split.input_spec, len(input_shape))
        sizes.update({c: (None if d is None else int(d)) for c, d in zip(x_spec, input_shape, strict=True)})
        n_ellipsis = len(input_shape) - (len(self._split.input_spec) - (3 if "..." in self._split.input_spec else 0))
        out_spec = _expand(self._split.output_spec, len(self._split.output_spec) - 3 + n_ellipsis)
        return out_spec, tuple(sizes[c] for c in out_spec)

    def _bias_shape(self, input_shape: Sequence[int | None]) -> tuple[int, ...]:
        # EinsumDense's rule: the bias spans the output from its first bias axis on, size 1 on the other axes
        out_spec, out_shape = self._output_sizes(input_shape)
        first = min(out_spec.index(c) for c in self.bias_axes)
        return tuple(int(out_shape[i]) if c in self.bias_axes else 1 for i, c in enumerate(out_spec) if i >= first)

    def call(self, inputs: Any) -> Any:
        x = ops.einsum(self._split.first, inputs, self.kernel_a)
        x = ops.einsum(self._split.second, x, self.kernel_b)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return self._output_sizes(tuple(input_shape))[1]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "equation": self.equation,
                "kernel_shape": list(self.kernel_shape),
                "rank": self.rank,
                "bias_axes": self.bias_axes,
                "activation": keras.activations.serialize(self.activation),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config

    @property
    def use_bias(self) -> bool:
        """Whether the layer adds a bias (``bias_axes`` given)."""
        return bool(self.bias_axes)

    def set_decomposed_weights(self, source_weights: Sequence[Any]) -> None:
        """Set ``A``, ``B`` (and bias) to the truncated SVD of an original ``EinsumDense``'s ``[kernel(, bias)]``.

        Example:
            >>> import keras, tfcompress as tfc
            >>> src = keras.layers.EinsumDense("ab,bc->ac", output_shape=8, bias_axes="c")
            >>> src.build((None, 16))
            >>> layer = tfc.SVDEinsumDense("ab,bc->ac", (16, 8), rank=4, bias_axes="c")
            >>> layer.build((None, 16))
            >>> layer.set_decomposed_weights(src.get_weights())
        """
        where = f"SVDEinsumDense '{self.name}'"
        if not self.built:
            raise ValueError(f"{where} must be built before set_decomposed_weights; call it or use from_layer().")
        weights = list(source_weights)
        expected = 2 if self.use_bias else 1
        if len(weights) != expected:
            raise ValueError(
                f"{where} (bias_axes={self.bias_axes!r}) expects {expected} source weight(s), got {len(weights)}."
            )
        kernel = np.asarray(weights[0])
        if kernel.shape != self.kernel_shape:
            raise ValueError(f"{where}: source kernel shape {kernel.shape} != {self.kernel_shape}.")
        bias = np.asarray(weights[1]) if self.use_bias else None
        if bias is not None and bias.shape != tuple(self.bias.shape):
            raise ValueError(f"{where}: bias shape {bias.shape} != {tuple(self.bias.shape)}.")
        a, b = einsum_unfold.einsum_factors(kernel, self.equation, self.rank)
        self.kernel_a.assign(a.astype(self.kernel_a.dtype))
        self.kernel_b.assign(b.astype(self.kernel_b.dtype))
        if bias is not None:
            self.bias.assign(bias.astype(self.bias.dtype))

    def reconstructed_kernel(self) -> np.ndarray:
        """The ``EinsumDense`` kernel (``kernel_shape``) that the two contractions equal."""
        if not self.built:
            raise ValueError(f"SVDEinsumDense '{self.name}' must be built first; call it or use from_layer().")
        return einsum_unfold.einsum_compose(
            ops.convert_to_numpy(self.kernel_a), ops.convert_to_numpy(self.kernel_b), self.equation
        )

    @classmethod
    def from_layer(cls, layer: keras.layers.EinsumDense, rank: int) -> SVDEinsumDense:
        """A built ``SVDEinsumDense`` with the optimal rank-``rank`` factors of ``layer``.

        Example:
            >>> import keras, tfcompress as tfc
            >>> o = keras.layers.EinsumDense("abcd,cde->abe", output_shape=(None, 32), bias_axes="e")
            >>> o.build((None, 10, 4, 8))
            >>> tuple(tfc.SVDEinsumDense.from_layer(o, rank=8).kernel_b.shape)
            (8, 32)
        """
        check_source_einsum_dense(layer)
        kernel = np.asarray(ops.convert_to_numpy(layer.kernel))
        weights = [kernel]
        if layer.bias is not None:
            weights.append(np.asarray(ops.convert_to_numpy(layer.bias)))
        new = cls(
            layer.equation,
            kernel.shape,
            rank=rank,
            bias_axes=layer.bias_axes if layer.bias is not None else None,
            activation=keras.activations.serialize(layer.activation),
            kernel_initializer=keras.initializers.serialize(layer.kernel_initializer),
            bias_initializer=keras.initializers.serialize(layer.bias_initializer),
            name=layer.name,
            dtype=layer.dtype_policy,
            trainable=layer.trainable,
        )
        build_for_factors(new, _source_input_shape(layer))
        new.set_decomposed_weights(weights)
        return new


def _source_input_shape(layer: Any) -> tuple[int | None, ...]:
    """The input shape ``layer`` was built with (batch and free sizes may be ``None``)."""
    config = layer.get_build_config() or {}
    shape = config.get("input_shape")
    if shape is None:
        raise ValueError(f"{_describe(layer)}: the input shape it was built with is not known.")
    return tuple(None if d is None else int(d) for d in shape)


def positions_of(equation: str, input_shape: Sequence[int | None]) -> int:
    """How many times per sample the (in x out) matrix is applied: the product of the input's sizes that are not
    summed, the first (batch) axis left out.

    Example:
        >>> positions_of("abc,cde->abde", (None, 10, 64)), positions_of("abcd,cde->abe", (None, 10, 4, 8))
        (10, 10)
    """
    split = einsum_unfold.einsum_split(equation)
    spec = _expand(split.input_spec, len(input_shape))
    sizes = [d for c, d in zip(spec[1:], tuple(input_shape)[1:], strict=True) if c not in split.summed]
    if any(d is None for d in sizes):
        raise ValueError(f"the input shape {tuple(input_shape)} has unknown sizes outside the contracted axes")
    return math.prod(int(d) for d in sizes)
