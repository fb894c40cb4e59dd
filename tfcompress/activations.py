"""Layer inputs from sampled data, reduced to moments as they stream by (for the data-aware factors).

The data forms, the model inputs and the sampled positions are channel pruning's
(:mod:`tfcompress.pruning.sampling`): both read a layer at the same positions.

A layer's inputs are read from one forward pass of the sample images through a feature model that outputs every
requested layer's input; batch by batch, each layer's input patches at sampled output positions (the same
positions channel pruning samples: :func:`tfcompress.pruning.reconstruct.sample_positions`, columns as
:func:`~tfcompress.pruning.reconstruct.extract_patches` lays them out) are added to a
:class:`tfcompress.data_aware.MomentAccumulator` and dropped. Only the ``O(cols²)`` moments of each layer are
kept, never the samples.

With ``reference`` (the original model), the moments are paired: ``x̂`` from ``model`` (the compressed one) and
``x`` from ``reference`` at the same positions, for the asymmetric fits.

Example:
    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, name="c")])
    >>> collector = MomentCollector(np.ones((4, 6, 6, 2), "float32"), samples=20, seed=0)
    >>> collector.moments(m, ["c"])["c"].gram.shape
    (18, 18)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from ._checks import check_finite
from .cost import KIND_CLASSES, layer_kind
from .data_aware import MomentAccumulator, Moments
from .pruning.reconstruct import conv_output_size, extract_patches
from .pruning.sampling import layer_positions
from .sublayers import patched_calls

__all__ = ["PatchSpec", "patch_spec", "MomentCollector", "MAX_FEATURES", "einsum_input_order", "capturing"]

#: a layer whose input patch is wider than this is fitted data-free (its moments would take
#: ``8 * MAX_FEATURES²`` bytes, 200 MB at 5000)
MAX_FEATURES = 5000


@dataclass(frozen=True)
class PatchSpec:
    """How a layer's input becomes the vectors its kernel multiplies: ``kernel_size`` ``None`` for a Dense layer
    (the rows of its last axis) or an EinsumDense (``einsum``: its input spec and the summed indices; each vector
    is the summed axes' values at one position of the other axes, in the order of the kernel's unfolding), else a
    2-D convolution's patch geometry (a Conv1D's as ``(k, 1)``)."""

    kernel_size: tuple[int, int] | None = None
    strides: tuple[int, int] = (1, 1)
    padding: str = "valid"
    dilation: tuple[int, int] = (1, 1)
    one_d: bool = False
    einsum: tuple[str, str] | None = None
    #: a SeparableConv2D's depthwise stage (the layer): its pointwise kernel multiplies each output pixel's
    #: ``C*depth_multiplier`` depthwise outputs, which are computed from the input first
    depthwise: Any = field(default=None, compare=False, repr=False)

    def vectors(self, x: np.ndarray) -> np.ndarray:
        """``(batch, positions, width)``: a Dense or EinsumDense input (or a SeparableConv2D's depthwise outputs)
        as the vectors its kernel multiplies."""
        if self.depthwise is not None:
            layer = self.depthwise
            x = np.asarray(
                keras.ops.convert_to_numpy(
                    keras.ops.depthwise_conv(
                        x,
                        layer.depthwise_kernel,
                        strides=layer.strides,
                        padding=layer.padding,
                        dilation_rate=layer.dilation_rate,
                    )
                ),
                dtype=np.float32,
            )
        if self.einsum is not None:
            order = einsum_input_order(*self.einsum, x.ndim)
            x = np.transpose(x, order)
            width = int(np.prod(x.shape[x.ndim - len(self.einsum[1]) :], dtype=np.int64))
            return x.reshape(len(x), -1, width)
        return x.reshape(len(x), -1, x.shape[-1])

    def width(self, channels: int) -> int:
        """Columns of one patch for ``channels`` input channels."""
        if self.kernel_size is None:
            return channels
        return self.kernel_size[0] * self.kernel_size[1] * channels


def patch_spec(layer: Any) -> tuple[PatchSpec | None, str | None]:
    """``(spec, None)`` for a layer whose inputs the data-aware fits can read, else ``(None, why)``.

    Example:
        >>> import keras
        >>> patch_spec(keras.layers.Dense(3))[0]
        PatchSpec(kernel_size=None, strides=(1, 1), padding='valid', dilation=(1, 1), one_d=False, einsum=None)
        >>> patch_spec(keras.layers.Conv1D(3, 3, padding="causal"))[1]
        "padding 'causal' (data-aware factors read 'valid' and 'same' convolutions)"
    """
    kind = layer_kind(layer)
    readable = ("dense", "einsum_dense", "conv2d", "conv1d", "separable_conv2d")
    if kind not in readable or not isinstance(layer, KIND_CLASSES[kind]):
        return None, (
            f"{type(layer).__name__} (data-aware factors read Dense, EinsumDense, Conv1D, Conv2D and SeparableConv2D "
            "layers)"
        )
    if kind == "dense":
        return PatchSpec(), None
    if kind == "einsum_dense":
        from .einsum_unfold import einsum_split

        try:
            split = einsum_split(layer.equation)
        except ValueError as err:
            return None, str(err)
        return PatchSpec(einsum=(split.input_spec, split.summed)), None
    one_d = kind == "conv1d"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None, "channels_first data format"
    if getattr(layer, "groups", 1) != 1:
        return None, "grouped convolution"
    padding = str(layer.padding).lower()
    if padding not in ("valid", "same"):
        return None, f"padding {padding!r} (data-aware factors read 'valid' and 'same' convolutions)"
    if kind == "separable_conv2d":
        return PatchSpec(depthwise=layer), None
    if one_d:
        (k,), (s,), (d,) = layer.kernel_size, layer.strides, layer.dilation_rate
        return PatchSpec((int(k), 1), (int(s), 1), padding, (int(d), 1), one_d=True), None
    return PatchSpec(tuple(layer.kernel_size), tuple(layer.strides), padding, tuple(layer.dilation_rate)), None


class MomentCollector:
    """Moments of layers' input patches at sampled positions of fixed sample images.

    Args:
        images: the model inputs (batch axis first), e.g. from ``model_inputs``.
        samples: sampled output positions (Dense: input rows) per layer, over all images.
        seed: seed of the positions (each layer's positions also depend on its name).
        batch_size: images per forward pass.
    """

    def __init__(self, images: np.ndarray, samples: int, seed: int = 0, batch_size: int = 128) -> None:
        self.images = images
        self.samples = int(samples)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.seconds = 0.0
        self._positions: dict[tuple[str, tuple], np.ndarray] = {}

    def _positions_for(self, name: str, batch: int, out_hw: tuple[int, int]) -> np.ndarray:
        key = (name, (batch, *out_hw))
        if key not in self._positions:
            self._positions[key] = layer_positions(name, batch, out_hw, self.samples, self.seed)
        return self._positions[key]

    def _rows(self, name: str, spec: PatchSpec, x: np.ndarray, lo: int) -> tuple[np.ndarray, np.ndarray]:
        """The patch rows of this batch (images ``lo..lo+len(x)``) at the layer's sampled positions, and the indices
        of those positions among all the layer's sampled positions (what pairs them with stored outputs)."""
        total = len(self.images)
        if spec.kernel_size is None:
            x = spec.vectors(x)
            per_image = int(x.shape[1])
            pick = self._positions_for(name, 1, (1, total * per_image))[:, 2]
            here = (pick >= lo * per_image) & (pick < (lo + len(x)) * per_image)
            return x.reshape(-1, x.shape[-1])[pick[here] - lo * per_image], np.flatnonzero(here)
        if spec.one_d:
            x = x[:, :, None, :]
        out_hw = conv_output_size(x.shape[1:3], spec.kernel_size, spec.strides, spec.padding, spec.dilation)
        positions = self._positions_for(name, total, out_hw)
        here = (positions[:, 0] >= lo) & (positions[:, 0] < lo + len(x))
        rows = extract_patches(
            x, spec.kernel_size, spec.strides, spec.padding, spec.dilation, positions[here] - np.array([lo, 0, 0])
        )
        return rows, np.flatnonzero(here)

    def count(self, name: str) -> int | None:
        """How many positions of layer ``name`` are sampled (``None`` before the layer was first read)."""
        counts = [len(p) for (n, _), p in self._positions.items() if n == name]
        return counts[0] if counts else None

    def outputs(
        self,
        reference: keras.Model,
        names: list[str],
        maps: dict[str, tuple[np.ndarray, np.ndarray | None]],
        specs: dict[str, PatchSpec],
        layers: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """``{name: outputs}``: each named layer's outputs in ``reference`` (before its activation) at each of the
        layer's sampled positions, rows in the positions' order (float32), from one pass of the images.

        ``maps``: ``{name: (matrix, bias)}``, the layer's kernel as the ``(width, N)`` matrix its input rows (as
        :meth:`moments` reads them) multiply, and the bias it adds (``None``: none). ``layers``: as for
        :meth:`moments` (layers of ``reference`` that are not top-level ones, hooked).

        Example:
            >>> import keras, numpy as np
            >>> m = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, name="c")])
            >>> c = MomentCollector(np.ones((4, 6, 6, 2), "float32"), samples=20, seed=0)
            >>> w = keras.ops.convert_to_numpy(m.get_layer("c").kernel).reshape(18, 3)
            >>> c.outputs(m, ["c"], {"c": (w, None)}, {"c": patch_spec(m.get_layer("c"))[0]})["c"].shape
            (20, 3)
        """
        start = time.perf_counter()
        hooked = {n: layers[n] for n in names if layers and n in layers}
        direct = [n for n in names if n not in hooked]
        feature = keras.Model(reference.inputs[0], [reference.get_layer(n).input for n in direct]) if direct else None
        found: dict[str, np.ndarray] = {}
        for lo in range(0, len(self.images), self.batch_size):
            outs = _read(feature, direct, reference, hooked, self.images[lo : lo + self.batch_size])
            for name in names:
                rows, where = self._rows(name, specs[name], _finite(outs.pop(name), name), lo)
                matrix, bias = maps[name]
                if name not in found:
                    found[name] = np.zeros((self.count(name) or 0, matrix.shape[1]), np.float32)
                y = rows @ matrix
                found[name][where] = y if bias is None else y + bias
                del rows, y
        self.seconds += time.perf_counter() - start
        return found

    def moments(
        self,
        model: keras.Model,
        names: list[str],
        reference: keras.Model | None = None,
        specs: dict[str, PatchSpec] | None = None,
        layers: dict[str, Any] | None = None,
        reference_layers: dict[str, Any] | None = None,
        outputs: dict[str, np.ndarray] | None = None,
    ) -> dict[str, Moments]:
        """``{name: Moments}`` of each named layer's input patches (one pass of the images through ``model``;
        paired with ``reference``'s inputs to the same-named layers when given; with the original layer's outputs
        at the same positions, as :meth:`outputs` gives them, for the layers in ``outputs``).

        ``layers``: ``{name: layer object}`` for layers that are not top-level layers of ``model`` (inside a nested
        model or a custom layer, named by their path): their inputs are read by hooking the layer's ``call`` while
        the whole model runs on the batch (``reference_layers``: the same for ``reference``).
        """
        start = time.perf_counter()
        hooked = {n: layers[n] for n in names if layers and n in layers}
        if reference is not None and hooked and not (reference_layers and set(hooked) <= set(reference_layers)):
            raise ValueError("MomentCollector.moments: give reference_layers for every hooked layer.")
        outputs = outputs or {}
        if reference is not None and outputs:
            raise ValueError("MomentCollector.moments: pair with a reference model's inputs or give outputs, not both.")
        if specs is None:
            specs = {}
            for name in names:
                spec, why = patch_spec(hooked[name] if name in hooked else model.get_layer(name))
                if spec is None:
                    raise ValueError(f"layer '{name}': its inputs cannot be read for a data-aware fit: {why}.")
                specs[name] = spec
        direct = [n for n in names if n not in hooked]
        feature = source = None
        if direct:
            feature = keras.Model(model.inputs[0], [model.get_layer(n).input for n in direct])
            if reference is not None:
                source = keras.Model(reference.inputs[0], [reference.get_layer(n).input for n in direct])
        accumulators: dict[str, MomentAccumulator] = {}
        for lo in range(0, len(self.images), self.batch_size):
            batch = self.images[lo : lo + self.batch_size]
            outs = _read(feature, direct, model, hooked, batch)
            targets: dict[str, Any] = {}
            if reference is not None:
                mirrored = {n: reference_layers[n] for n in hooked} if reference_layers else {}
                targets = _read(source, direct, reference, mirrored, batch)
            for name in names:
                x = _finite(outs.pop(name), name)
                rows, where = self._rows(name, specs[name], x, lo)
                target_rows = given = None
                if name in targets:
                    target_rows = self._rows(name, specs[name], _finite(targets.pop(name), name), lo)[0]
                if name in outputs:
                    given = outputs[name][where]
                if name not in accumulators:
                    width = 0 if given is None else given.shape[1]
                    accumulators[name] = MomentAccumulator(rows.shape[1], target_rows is not None, width)
                accumulators[name].add(rows, target_rows, given)
                del x, rows, target_rows, given
        self.seconds += time.perf_counter() - start
        return {name: accumulators[name].moments() for name in names}


def _read(
    feature: keras.Model | None, direct: list[str], model: keras.Model, hooked: dict[str, Any], batch: np.ndarray
) -> dict[str, Any]:
    """``{name: input tensor}`` of one batch: the top-level layers' from the feature model, the hooked ones' from
    one run of ``model`` with their ``call`` hooked."""
    out: dict[str, Any] = {}
    if feature is not None:
        out.update(zip(direct, _listed(feature(batch, training=False)), strict=True))
    if hooked:
        with capturing(hooked) as captured:
            model(batch, training=False)
        for name, seen in captured.items():
            if not seen:
                raise ValueError(f"layer '{name}' was not called when the model ran: its inputs cannot be read.")
            out[name] = seen[0]
    return out


@contextlib.contextmanager
def capturing(layers: dict[str, Any]) -> Iterator[dict[str, list[Any]]]:
    """Within the block, each layer in ``layers`` records the first argument of every call (its input) in
    ``captured[name]``; the layers' own ``call`` is restored afterwards, also on an error.

    Example:
        >>> import keras, numpy as np
        >>> inner = keras.layers.Dense(2)
        >>> m = keras.Sequential([keras.Input((3,)), inner])
        >>> with capturing({"d": inner}) as seen:
        ...     _ = m(np.ones((4, 3), "float32"))
        >>> [tuple(x.shape) for x in seen["d"]], "call" in vars(inner)
        ([(4, 3)], False)
    """
    captured: dict[str, list[Any]] = {name: [] for name in layers}

    def recorder(name: str) -> Any:
        def wrap(layer: Any, call: Any) -> Any:
            def hook(*args: Any, **kwargs: Any) -> Any:
                captured[name].append(args[0] if args else kwargs.get("inputs"))
                return call(*args, **kwargs)

            return hook

        return wrap

    with contextlib.ExitStack() as stack:
        for name, layer in layers.items():
            stack.enter_context(patched_calls([layer], recorder(name)))
        yield captured


def einsum_input_order(input_spec: str, summed: str, ndim: int) -> list[int]:
    """The permutation of an EinsumDense input's ``ndim`` axes (batch first) that keeps the other axes in order
    and puts the ``summed`` ones last, in the kernel's order (``input_spec`` may hold one ``...``).

    Example:
        >>> einsum_input_order("abcd", "cd", 4), einsum_input_order("...b", "b", 3)
        ([0, 1, 2, 3], [0, 1, 2])
        >>> einsum_input_order("abc", "b", 3)
        [0, 2, 1]
    """
    if "..." in input_spec:
        head, tail = input_spec.split("...")
        letters = list(head) + [None] * (ndim - len(head) - len(tail)) + list(tail)
    else:
        letters = list(input_spec)
    if len(letters) != ndim:
        raise ValueError(f"input spec {input_spec!r} does not fit an input of {ndim} axes.")
    summed_axes = [letters.index(c) for c in summed]
    return [i for i in range(ndim) if i not in summed_axes] + summed_axes


def _listed(outs: Any) -> list[Any]:
    return list(outs) if isinstance(outs, list | tuple) else [outs]


def _finite(tensor: Any, name: str) -> np.ndarray:
    x = np.asarray(keras.ops.convert_to_numpy(tensor), dtype=np.float32)
    check_finite(
        x,
        f"data-aware factors: the inputs of layer '{name}' (computed from the parameters' data)",
        "the layers before it give NaN or infinity on these inputs: check the model's weights and the data",
    )
    return x
