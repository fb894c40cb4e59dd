"""Channel pruning's data: the user's ``data`` turned into model inputs, the channels kept at a ratio, and the
sampled activations the channel choice and the least-squares refits are computed on."""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from .._checks import check_finite
from .consumers import view_of
from .reconstruct import conv_output_size, extract_patches, sample_positions
from .separable import depthwise_outputs

logger = logging.getLogger("tfcompress")

#: about this many sampled output positions are taken per image
POSITIONS_PER_IMAGE = 8


def keep_count(ratio: float, channels: int, multiplicity: int = 1) -> int:
    """Channels kept at ``ratio`` (fraction kept): rounded to a multiple of ``multiplicity``, within 1..channels.

    Example:
        >>> keep_count(0.5, 10), keep_count(0.5, 10, multiplicity=4), keep_count(0.01, 10)
        (5, 4, 1)
    """
    m = int(multiplicity)
    keep = m * round(ratio * channels / m)
    if keep < 1:
        keep = m if m <= channels else 1
    return int(min(keep, channels))


def _first(element: Any) -> Any:
    """The inputs of one dataset element: ``x`` of ``(x, y)`` / ``(x, y, w)``."""
    if isinstance(element, tuple) and len(element) in (2, 3) and not isinstance(element[0], dict):
        return element[0]
    return element


def check_data_form(data: Any, what: str = "ChannelPruningParameters.data") -> None:
    """Refuse the forms of ``ChannelPruningParameters.data`` (or of any ``data`` argument, named ``what`` in the
    message) that could be read two ways.

    A list (``[a, b]``: two input arrays, or inputs and labels?) and a tuple of other than 2 or 3 items are
    refused; a tuple is ``(x, y)`` or ``(x, y, sample_weights)``, and only ``x`` is used.

    Example:
        >>> import numpy as np
        >>> check_data_form((np.zeros((4, 2)), np.zeros(4)))
        >>> check_data_form([np.zeros((4, 2)), np.zeros((4, 2))])
        Traceback (most recent call last):
        ...
        TypeError: ChannelPruningParameters.data: a list is ambiguous (several input arrays, or inputs and labels?); pass the model inputs as one array (batch axis first), a tuple (x, y) or (x, y, sample_weights), or a tf.data.Dataset.
    """
    if isinstance(data, list):
        raise TypeError(
            f"{what}: a list is ambiguous (several input arrays, or inputs and labels?); pass "
            "the model inputs as one array (batch axis first), a tuple (x, y) or (x, y, sample_weights), or a "
            "tf.data.Dataset."
        )
    if isinstance(data, tuple) and len(data) not in (2, 3):
        raise TypeError(
            f"{what}: a tuple must be (x, y) or (x, y, sample_weights), got {len(data)} "
            "items; pass the model inputs as one array (batch axis first) or a tf.data.Dataset."
        )


def model_inputs(data: Any, model: keras.Model, limit: int, what: str = "ChannelPruningParameters.data") -> np.ndarray:
    """Up to ``limit`` model inputs from ``data`` (array, tensor, ``(x, y)`` tuple or ``tf.data.Dataset``); errors
    name the argument ``what``.

    Example:
        >>> import numpy as np, keras
        >>> m = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3)])
        >>> model_inputs((np.zeros((10, 4, 4, 1)), np.zeros(10)), m, 6).shape
        (6, 4, 4, 1)
    """
    if len(model.inputs) != 1:
        raise ValueError(
            f"{what}: model '{model.name}' has {len(model.inputs)} inputs; only single-input models are "
            "supported for now."
        )
    check_data_form(data, what)
    expected = tuple(model.inputs[0].shape)
    chunks: list[np.ndarray] = []
    count = 0
    if hasattr(data, "as_numpy_iterator") or hasattr(data, "element_spec"):
        iterator: Iterable[Any] = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data
    else:
        iterator = [data]
    for element in iterator:
        x = np.asarray(keras.ops.convert_to_numpy(_first(element)), dtype=np.float32)
        if x.ndim == len(expected) - 1:
            x = x[None]  # an unbatched dataset: one example per element
        if x.ndim != len(expected) or any(
            e is not None and e != s for e, s in zip(expected[1:], x.shape[1:], strict=False)
        ):
            raise ValueError(
                f"{what}: inputs of shape {x.shape} do not fit the model input {expected}; give "
                "model inputs with the batch axis first (labels, if any, as the second element of a tuple)."
            )
        chunks.append(x[: limit - count])
        count += len(chunks[-1])
        if count >= limit:
            break
    if not count:
        raise ValueError(f"{what} holds no inputs.")
    inputs = np.concatenate(chunks, axis=0)
    check_finite(
        inputs,
        f"{what} (the first {len(inputs)} model inputs)",
        "the least-squares refit cannot use them: fix or drop those samples",
    )
    return inputs


def layer_positions(name: str, batch: int, out_hw: tuple[int, int], samples: int, seed: int) -> np.ndarray:
    """The ``samples`` output positions ``(b, row, col)`` sampled for layer ``name`` over ``batch`` images of
    ``out_hw`` outputs: fixed by ``seed`` and the name, so every model compared is read at the same positions.

    Example:
        >>> bool((layer_positions("conv", 4, (5, 5), 10, 0) == layer_positions("conv", 4, (5, 5), 10, 0)).all())
        True
    """
    seed = (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**32)
    return sample_positions(batch, out_hw, int(samples), seed=seed)


class Sampler:
    """Consumer-layer inputs at fixed sampled positions (the same positions for every model compared).

    The original model's patches, which every refit compares against, are kept between calls, but at most
    ``keep_bytes`` of them (``None``: all): a pass over the model fetches the layers asked for and, while they fit,
    the layers after them in forward order, and lets go of the others first. Callers that walk the layers in
    forward order (the score table, the masked plan) so pay a few passes per walk instead of holding every
    consumer's patches (about the size of the weights) for the whole run.

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, name="a"),
        ...                           keras.layers.Conv2D(3, 3, name="b")])
        >>> sampler = Sampler(np.ones((2, 6, 6, 2), "float32"), samples=5, seed=0, keep_bytes=0)
        >>> {k: v.shape for k, v in sampler.original_patches(model, ["b"], ["a", "b"]).items()}
        {'b': (5, 36)}
        >>> sampler.kept_layers, sampler.original_passes
        (['b'], 1)
    """

    def __init__(
        self, images: np.ndarray, samples: int, seed: int, batch_size: int = 8, keep_bytes: int | None = None
    ) -> None:
        if keep_bytes is not None and keep_bytes < 0:
            raise ValueError(f"Sampler: keep_bytes must be None or >= 0, got {keep_bytes!r}.")
        self.images = images
        self.samples = samples
        self.seed = seed
        self.batch_size = batch_size
        self.keep_bytes = keep_bytes
        self._positions: dict[tuple[str, tuple], np.ndarray] = {}
        self._original: dict[str, np.ndarray] = {}
        self.original_passes = 0  # passes over the original model (each fetches one or more layers' patches)
        self.seconds = 0.0

    @property
    def kept_layers(self) -> list[str]:
        """The layers whose original patches are held now."""
        return list(self._original)

    def _positions_for(self, name: str, batch: int, out_hw: tuple[int, int]) -> np.ndarray:
        key = (name, (batch, *out_hw))
        if key not in self._positions:
            self._positions[key] = layer_positions(name, batch, out_hw, self.samples, self.seed)
        return self._positions[key]

    def _patch_bytes(self, model: keras.Model, name: str) -> int:
        """The size of one layer's sampled patches (float32, ``samples`` rows of the kernel's input columns)."""
        kernel = view_of(model.get_layer(name)).kernel
        return 4 * self.samples * int(np.prod(tuple(kernel.shape)[:-1], dtype=np.int64))

    def original_patches(self, model: keras.Model, names: list[str], every: list[str]) -> dict[str, np.ndarray]:
        """:meth:`patches` of the ORIGINAL model for ``names``: held ones are reused; the missing ones are fetched in
        one pass, with the layers after them in ``every`` (forward order) while ``keep_bytes`` allows."""
        missing = [name for name in names if name not in self._original]
        if missing:
            if self.keep_bytes is None:
                fetch = list(dict.fromkeys([*missing, *(n for n in every if n not in self._original)]))
            else:
                fetch = self._within_budget(model, names, missing, every)
            self._original.update(self.patches(model, fetch))
            self.original_passes += 1
        return {name: self._original[name] for name in names}

    def _within_budget(self, model: keras.Model, names: list[str], missing: list[str], every: list[str]) -> list[str]:
        """Let go of the held layers not asked for; then the missing ones and, while they fit in ``keep_bytes``,
        the layers that follow the last of them in ``every``."""
        for name in [n for n in self._original if n not in names]:
            del self._original[name]
        left = int(self.keep_bytes or 0) - sum(int(a.nbytes) for a in self._original.values())
        left -= sum(self._patch_bytes(model, name) for name in missing)
        fetch = list(missing)
        after = max((every.index(n) for n in missing if n in every), default=len(every))
        for name in every[after + 1 :]:
            if name in self._original or name in fetch:
                continue
            size = self._patch_bytes(model, name)
            if size > left:
                break
            fetch.append(name)
            left -= size
        return fetch

    def patches(self, model: keras.Model, names: list[str]) -> dict[str, np.ndarray]:
        """``{name: (P, cols)}``: each layer's input patches (Conv2D, columns like ``kernel.reshape(-1, N)``),
        depthwise outputs (SeparableConv2D, see :func:`~tfcompress.pruning.separable.depthwise_outputs`) or input
        rows (Dense) at the sampled positions, computed on ``model``."""
        start = time.perf_counter()
        layers = [model.get_layer(n) for n in names]
        views = [view_of(layer) for layer in layers]
        feature = keras.Model(model.inputs[0], [layer.input for layer in layers])
        total = len(self.images)
        result: dict[str, np.ndarray] = {}
        # batch by batch, each layer's patches are taken from its input maps right away: the maps of all layers
        # and all images are never held at once (they are many times the weights' size)
        for lo in range(0, total, self.batch_size):
            outs = feature(self.images[lo : lo + self.batch_size], training=False)
            outs = list(outs) if isinstance(outs, list | tuple) else [outs]
            for i, (name, view) in enumerate(zip(names, views, strict=True)):
                x = np.asarray(keras.ops.convert_to_numpy(outs[i]), dtype=np.float32)
                outs[i] = None
                check_finite(
                    x,
                    f"channel pruning: the inputs of layer '{name}' (computed from ChannelPruningParameters.data)",
                    "the layers before it give NaN or infinity on these inputs: check the model's weights and the data",
                )
                if view.kernel_size is not None:
                    out_hw = conv_output_size(x.shape[1:3], view.kernel_size, view.strides, view.padding, view.dilation)
                    positions = self._positions_for(name, total, out_hw)
                    here = (positions[:, 0] >= lo) & (positions[:, 0] < lo + len(x))
                    patches = extract_patches(
                        x,
                        view.kernel_size,
                        view.strides,
                        view.padding,
                        view.dilation,
                        positions[here] - np.array([lo, 0, 0]),
                    )
                    if view.depthwise is not None:  # a SeparableConv2D: its pointwise kernel reads these
                        patches = depthwise_outputs(patches, keras.ops.convert_to_numpy(view.depthwise))
                else:
                    per_image = int(np.prod(x.shape[1:-1], dtype=np.int64))
                    pick = self._positions_for(name, 1, (1, total * per_image))[:, 2]
                    here = (pick >= lo * per_image) & (pick < (lo + len(x)) * per_image)
                    patches = x.reshape(-1, x.shape[-1])[pick[here] - lo * per_image]
                if name not in result:
                    result[name] = np.empty((len(here), patches.shape[1]), dtype=patches.dtype)
                result[name][here] = patches
                del x, patches
        self.seconds += time.perf_counter() - start
        return result
