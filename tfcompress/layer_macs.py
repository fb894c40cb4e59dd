"""MACs of any Keras layer or operation node from the shapes it is called with: the honest half of ``model_cost``.

One multiply-accumulate is counted per weight use (convolutions, ``Dense``, ``EinsumDense``, recurrent kernels) and
per product of two activations (``MultiHeadAttention``'s Q·Kᵀ and A·V, ``keras.ops.matmul``/``einsum`` nodes,
``Dot``, ``Attention``), for one sample. Normalisation, activations, pooling, element-wise merges, embeddings and
reshapes count 0 MACs, as everywhere in tfcompress.

A layer whose arithmetic is not known raises :class:`Uncounted` with the reason; ``model_cost`` lists it as
uncounted instead of counting it as 0. A layer that is not a built-in Keras layer but holds sublayers (a custom
residual block, a keras_hub ``TransformerEncoder``) is counted through its sublayers: its ``call`` is traced once on
its real input shapes (``compute_output_spec``, nothing runs on data) and every sublayer call is recorded with its
shapes; weights the custom layer holds itself (outside its sublayers) make it uncounted, since what its own code
does with them is not known.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import keras

from .sublayers import TracedOp, attribute_sublayers, own_weights, static_shape, trace_calls

__all__ = [
    "Uncounted",
    "UnknownSize",
    "einsum_macs",
    "layer_macs",
    "operation_macs",
    "ZERO_MAC_LAYERS",
    "ELEMENTWISE_HUB_LAYERS",
]

Shape = tuple[int | None, ...]

#: built-in layer classes (by name) that do no multiply-accumulate worth counting (per-value or data movement)
ZERO_MAC_LAYERS = frozenset(
    {
        "InputLayer",
        "Activation",
        "ReLU",
        "LeakyReLU",
        "PReLU",
        "ELU",
        "Softmax",
        "ThresholdedReLU",
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
        "Identity",
        "Masking",
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "UnitNormalization",
        "RMSNormalization",
        "Normalization",
        "Rescaling",
        "CenterCrop",
        "Resizing",
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "AveragePooling1D",
        "AveragePooling2D",
        "AveragePooling3D",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalAveragePooling3D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "GlobalMaxPooling3D",
        "Flatten",
        "Reshape",
        "Permute",
        "RepeatVector",
        "Cropping1D",
        "Cropping2D",
        "Cropping3D",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "ZeroPadding3D",
        "UpSampling1D",
        "UpSampling2D",
        "UpSampling3D",
        "Add",
        "Subtract",
        "Multiply",
        "Average",
        "Maximum",
        "Minimum",
        "Concatenate",
        "Embedding",
        "CategoryEncoding",
        "Hashing",
        "IntegerLookup",
        "StringLookup",
        "Discretization",
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomCrop",
        "RandomContrast",
        "RandomBrightness",
        "LayerScale",
    }
)

#: keras.ops operation nodes (class names) whose arithmetic is not counted here: they are reported as uncounted
_UNCOUNTED_OPS = frozenset(
    {
        "Conv",
        "DepthwiseConv",
        "SeparableConv",
        "ConvTranspose",
        "Fft",
        "Fft2",
        "Ifft2",
        "Rfft",
        "Irfft",
        "Stft",
        "Istft",
        "Solve",
        "Inv",
        "Cholesky",
        "Det",
        "Eig",
        "Eigh",
        "Lu",
        "Qr",
        "Svd",
        "Lstsq",
        "Kron",
        "Tensordot",
        "Inner",
        "Vdot",
        "Cross",
        "Correlate",
        "Convolve",
        "Outer",
        "DotProductAttention",
    }
)


class Uncounted(Exception):
    """Raised when a layer's MACs cannot be known; the message is the reason shown to the user."""


class UnknownSize(Uncounted):
    """The MACs depend on a size the model leaves open (``keras.Input((None, None, 3))``)."""


def _per_sample(shape: Sequence[int | None], what: str) -> tuple[int, ...]:
    """``shape`` with the batch axis set to 1; other unknown sizes make the count impossible."""
    dims = [1, *shape[1:]] if len(shape) else []
    if any(d is None for d in dims):
        raise UnknownSize(f"{what} has unknown size {tuple(shape)}; give the model a fixed input size")
    return tuple(int(d) for d in dims)


def _letters(spec: str, rank: int) -> list[str]:
    """The index letters of one einsum operand, with ``...`` expanded to private placeholder letters."""
    if "..." not in spec:
        return list(spec)
    head, tail = spec.split("...")
    missing = rank - len(head) - len(tail)
    return [*head, *(f"#{i}" for i in range(missing)), *tail]


def einsum_macs(equation: str, shapes: Sequence[Sequence[int]]) -> int:
    """Multiply-accumulates of a two-operand einsum: the product of the sizes of all distinct indices.

    Example:
        >>> einsum_macs("abc,cde->abde", [(1, 16, 64), (64, 4, 16)])
        65536
        >>> einsum_macs("...b,bc->...c", [(1, 7, 3), (3, 5)])
        105
    """
    equation = equation.replace(" ", "")
    inputs = equation.split("->")[0].split(",")
    if len(inputs) != len(shapes):
        raise Uncounted(f"einsum {equation!r} has {len(inputs)} operands, got {len(shapes)} shapes")
    sizes: dict[str, int] = {}
    for spec, shape in zip(inputs, shapes, strict=True):
        letters = _letters(spec, len(shape))
        if len(letters) != len(shape):
            raise Uncounted(f"einsum {equation!r} does not match shape {tuple(shape)}")
        for letter, size in zip(letters, shape, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), int(size))  # broadcasting: size 1 against n
    return math.prod(sizes.values())


def _spatial(shape: tuple[int, ...], layer: Any) -> int:
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return math.prod(shape[2:])
    return math.prod(shape[1:-1])


def _size(variable: Any) -> int:
    return math.prod(int(d) for d in variable.shape)


def _projection_macs(
    projection: Any, shape: tuple[int, ...], special: Callable[[Any, Shape], int | None] | None
) -> int:
    """MACs of one of MultiHeadAttention's projections on a per-sample input ``shape``: a plain ``EinsumDense`` from
    its equation; a replaced one (an ``SVDEinsumDense``, ...) is counted as the layer it is."""
    if type(projection) is keras.layers.EinsumDense:
        return einsum_macs(projection.equation, [shape, tuple(projection.kernel.shape)])
    x = keras.KerasTensor((None, *shape[1:]))
    return layer_macs(projection, [x], {}, [], special)


def _mha_macs(
    layer: Any, args: Sequence[Any], kwargs: dict[str, Any], special: Callable[[Any, Shape], int | None] | None
) -> int:
    """The four projections at every position, plus Q·Kᵀ and A·V for every head."""
    try:
        bound = inspect.signature(layer.call).bind_partial(*args, **kwargs).arguments
    except TypeError as err:
        raise Uncounted(f"its call arguments could not be read ({err})") from None
    if "query" not in bound or "value" not in bound:
        raise Uncounted("its query and value inputs are not known")
    query = _per_sample(static_shape(bound["query"]), "the query")
    value = _per_sample(static_shape(bound["value"]), "the value")
    key = _per_sample(static_shape(bound["key"]), "the key") if bound.get("key") is not None else value
    heads, key_dim = int(layer.num_heads), int(layer.key_dim)
    value_dim = int(layer.value_dim) if getattr(layer, "value_dim", None) else key_dim
    projections = (
        _projection_macs(layer.query_dense, query, special)
        + _projection_macs(layer.key_dense, key, special)
        + _projection_macs(layer.value_dense, value, special)
        + _projection_macs(layer.output_dense, (*query[:-1], heads, value_dim), special)
    )
    axes = getattr(layer, "attention_axes", None)
    rank = len(query)
    if axes is None:
        axes = tuple(range(1, rank - 1))
    axes = tuple(int(a) % rank for a in axes)
    batch_like = math.prod(query[a] for a in range(1, rank - 1) if a not in axes)
    tq = math.prod(query[a] for a in axes)
    tk = math.prod(key[a] for a in axes)
    return projections + heads * batch_like * tq * tk * (key_dim + value_dim)


def _tensors(args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
    return [t for t in keras.tree.flatten((list(args), kwargs)) if hasattr(t, "shape") and hasattr(t, "dtype")]


def _recurrent_macs(layer: Any, inputs: tuple[int, ...]) -> int:
    cell = getattr(layer, "cell", None)
    kernel, recurrent = getattr(cell, "kernel", None), getattr(cell, "recurrent_kernel", None)
    if kernel is None or recurrent is None or len(kernel.shape) != 2:
        raise Uncounted("its cell's arithmetic is not known")
    steps = inputs[1]
    return steps * (_size(kernel) + _size(recurrent))


def layer_macs(
    layer: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    outputs: Sequence[Any],
    special: Callable[[Any, Shape], int | None] | None = None,
) -> int:
    """MACs of one call of ``layer`` for one sample.

    Args:
        layer: the layer (or a ``keras.ops`` operation node).
        args, kwargs: the call's arguments; tensors are anything with ``shape`` and ``dtype`` (KerasTensors).
        outputs: the call's output tensors (or shapes).
        special: ``special(layer, input_shape)`` gives the MACs of layers counted elsewhere (tfcompress's own
            decomposed layers), ``None`` for the rest.

    Raises:
        Uncounted: when the arithmetic of ``layer`` is not known; the message says why.

    Example:
        >>> import keras
        >>> x = keras.KerasTensor((None, 10, 8))
        >>> dense = keras.layers.Dense(4)
        >>> y = dense(x)
        >>> layer_macs(dense, [x], {}, [y])
        320
    """
    if not isinstance(layer, keras.layers.Layer):
        return operation_macs(layer, args, kwargs, outputs)
    tensors = _tensors(args, kwargs)
    in_shape = static_shape(tensors[0]) if tensors else ()
    if special is not None:
        known = special(layer, in_shape)
        if known is not None:
            return int(known)

    def out() -> tuple[int, ...]:
        if not outputs:
            raise Uncounted("its output shape is not known")
        return _per_sample(static_shape(outputs[0]), "its output")

    L = keras.layers
    if isinstance(layer, L.MultiHeadAttention):
        return _mha_macs(layer, args, kwargs, special)
    if isinstance(layer, L.EinsumDense):
        return einsum_macs(layer.equation, [_per_sample(in_shape, "its input"), tuple(layer.kernel.shape)])
    if isinstance(layer, L.Dense):
        return math.prod(_per_sample(in_shape, "its input")[1:-1]) * _size(layer.kernel)
    if isinstance(layer, L.SeparableConv1D | L.SeparableConv2D):
        return _spatial(out(), layer) * (_size(layer.depthwise_kernel) + _size(layer.pointwise_kernel))
    if isinstance(layer, L.DepthwiseConv1D | L.DepthwiseConv2D):
        return _spatial(out(), layer) * _size(layer.kernel)
    if isinstance(layer, L.Conv1DTranspose | L.Conv2DTranspose | L.Conv3DTranspose):
        return _spatial(_per_sample(in_shape, "its input"), layer) * _size(layer.kernel)
    if isinstance(layer, L.Conv1D | L.Conv2D | L.Conv3D):
        return _spatial(out(), layer) * _size(layer.kernel)
    if isinstance(layer, L.SimpleRNN | L.GRU | L.LSTM):
        return _recurrent_macs(layer, _per_sample(in_shape, "its input"))
    if isinstance(layer, L.Bidirectional):
        return sum(layer_macs(sub, args, kwargs, [], special) for sub in (layer.forward_layer, layer.backward_layer))
    if isinstance(layer, L.TimeDistributed):
        shape = _per_sample(in_shape, "its input")
        step = keras.KerasTensor((1, *shape[2:]))
        step_out = layer.layer.compute_output_spec(step)
        return shape[1] * layer_macs(layer.layer, [step], {}, [step_out], special)
    if isinstance(layer, L.Dot):
        a, b = (_per_sample(static_shape(t), "an input") for t in tensors[:2])
        axes = layer.axes if isinstance(layer.axes, list | tuple) else (layer.axes, layer.axes)
        return math.prod(a[1:]) * math.prod(b[1:]) // a[int(axes[0]) % len(a)]
    if type(layer) is L.Attention:
        q, v = (_per_sample(static_shape(t), "an input") for t in tensors[:2])
        return math.prod(q[1:-1]) * math.prod(v[1:-1]) * (q[-1] + v[-1])
    if type(layer).__name__ in ZERO_MAC_LAYERS and type(layer).__module__.startswith("keras."):
        return 0
    if isinstance(layer, L.Embedding):  # subclasses too (keras_hub's ReversibleEmbedding in its embedding mode)
        if kwargs.get("reverse") is True:  # ReversibleEmbedding(x, reverse=True): hidden states times the table
            return math.prod(_per_sample(in_shape, "its input")[1:]) * int(layer.input_dim)
        return 0
    if type(layer).__module__.startswith("keras."):
        if not layer.weights:
            return 0
        raise Uncounted(f"a {type(layer).__name__}, whose arithmetic tfcompress does not count yet")
    return _custom_layer_macs(layer, args, kwargs, special)


def operation_macs(op: Any, args: Sequence[Any], kwargs: dict[str, Any], outputs: Sequence[Any]) -> int:
    """MACs of a ``keras.ops`` operation node (``matmul`` and ``einsum`` count; element-wise and shape ops are 0).

    Example:
        >>> import keras
        >>> from keras.src.ops.numpy import Matmul
        >>> a, b = keras.KerasTensor((None, 4, 8)), keras.KerasTensor((None, 8, 5))
        >>> operation_macs(Matmul(), [a, b], {}, [keras.KerasTensor((None, 4, 5))])
        160
    """
    name = type(op).__name__
    tensors = _tensors(args, kwargs)
    if name == "Matmul" and len(tensors) == 2:
        a = _per_sample(static_shape(tensors[0]), "an operand")
        out = _per_sample(static_shape(outputs[0]), "its output")
        return math.prod(out[1:]) * (a[-1] if len(a) > 1 else a[0])
    if name == "Einsum":
        subscripts = getattr(op, "subscripts", None)
        if not isinstance(subscripts, str) or len(tensors) != 2:
            raise Uncounted(f"a keras.ops einsum with {len(tensors)} tensor operands")
        return einsum_macs(subscripts, [_per_sample(static_shape(t), "an operand") for t in tensors])
    if name == "Dot" and len(tensors) == 2:
        a = _per_sample(static_shape(tensors[0]), "an operand")
        out = _per_sample(static_shape(outputs[0]), "its output")
        return math.prod(out[1:]) * a[-1]
    if name in _UNCOUNTED_OPS:
        raise Uncounted(f"a keras.ops {name} operation, whose arithmetic tfcompress does not count")
    return 0


# ---------------------------------------------------------------- layers that hold sublayers


#: keras_hub layers (by class name) whose own weights are used element-wise or looked up, never multiplied into a
#: sum: a normalisation's scale, a position table, a class token, rotary angles. They count 0 MACs besides the
#: sublayers they run (ViT's patching runs its patch convolution).
ELEMENTWISE_HUB_LAYERS = frozenset(
    {
        "RMSNormalization",
        "MistralLayerNormalization",
        "LlamaLayerNorm",
        "PositionEmbedding",
        "RotaryEmbedding",
        "SinePositionEncoding",
        "ViTPatchingAndEmbedding",
    }
)


def _custom_layer_macs(
    layer: Any, args: Sequence[Any], kwargs: dict[str, Any], special: Callable[[Any, Shape], int | None] | None
) -> int:
    subs = [sub for _, sub in attribute_sublayers(layer)]
    if any(  # or a subclass of one (keras_hub's LlamaRotaryEmbedding is a RotaryEmbedding)
        cls.__module__.startswith("keras_hub.") and cls.__name__ in ELEMENTWISE_HUB_LAYERS
        for cls in type(layer).__mro__
    ):
        if not subs:
            return 0
        own = []
    else:
        own = [w for w in own_weights(layer, subs) if len(w.shape) > 0]  # a scalar weight can only scale
    if own:
        names = ", ".join(sorted({re.sub(r":\d+$", "", str(getattr(w, "path", w.name))) for w in own}))
        raise Uncounted(f"a custom layer ({type(layer).__name__}) that uses weights of its own ({names})")
    if not subs:
        raise Uncounted(f"a custom layer ({type(layer).__name__}) whose call() tfcompress cannot see into")
    try:
        calls = trace_calls(layer, args, kwargs)
    except ValueError as err:
        raise Uncounted(f"a custom layer ({type(layer).__name__}) whose {err}") from None
    if not calls:
        raise Uncounted(f"a custom layer ({type(layer).__name__}) whose sublayers were not seen running")
    total = 0
    for sub, sub_args, sub_kwargs, result in calls:
        outputs = [t for t in keras.tree.flatten(result) if hasattr(t, "shape")]
        if isinstance(sub, TracedOp):
            total += _traced_op_macs(sub, sub_args, sub_kwargs, outputs, layer)
            continue
        try:
            total += layer_macs(sub, sub_args, sub_kwargs, outputs, special)
        except Uncounted as err:
            raise Uncounted(f"its sublayer '{sub.name}' is {err}") from None
    return total


def _traced_op_macs(
    op: TracedOp, args: Sequence[Any], kwargs: dict[str, Any], outputs: Sequence[Any], owner: Any
) -> int:
    """MACs of a ``keras.ops`` product made by a custom layer's own code (see :class:`~tfcompress.sublayers.TracedOp`)."""
    tensors = _tensors(args, kwargs)
    where = f"a {op.name} in {type(owner).__name__}.call()"
    if op.name == "einsum":
        if op.subscripts is None or len(tensors) != 2:
            raise Uncounted(f"{where} with {len(tensors)} tensor operands")
        return einsum_macs(op.subscripts, [_per_sample(static_shape(t), where) for t in tensors])
    if op.name == "matmul" and len(tensors) == 2 and outputs:
        a = _per_sample(static_shape(tensors[0]), where)
        out = _per_sample(static_shape(outputs[0]), where)
        return math.prod(out[1:]) * (a[-1] if len(a) > 1 else a[0])
    if op.name == "dot_product_attention" and len(tensors) >= 3:
        # (batch, length, heads, head_dim) query, key and value: Q·Kᵀ and A·V for every head
        q, k, v = (_per_sample(static_shape(t), where) for t in tensors[:3])
        if len(q) != 4 or len(k) != 4 or len(v) != 4:
            raise Uncounted(f"{where} on inputs of rank {len(q)}")
        return q[2] * q[1] * k[1] * (q[3] + v[3])
    raise Uncounted(f"{where} whose operands are not known")
