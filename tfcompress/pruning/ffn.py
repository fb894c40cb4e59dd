"""Feed-forward (FFN) hidden units inside custom layers: finding them, checking them, and what they cost.

A transformer block (a keras_hub ``TransformerEncoder``, a Gemma or Mistral decoder block, a user's own layer) is
opaque to the graph analysis of :mod:`tfcompress.pruning.groups`: its feed-forward part runs inside its ``call``.
Here such a part is found from the sublayers the block runs (:func:`tfcompress.graph.walk_layers` with
``sublayers=True``): one or more *producers* (``Dense``, or ``EinsumDense`` with a 2-D kernel acting like one) that
make ``d_ff`` hidden units, and one *consumer* that reads them (``d_ff -> hidden``). Gated FFNs (Gemma, Mistral,
Llama) have two producers whose outputs are multiplied.

Names alone are not trusted. Each candidate is checked on sampled inputs of the block (on a working copy, restored
afterwards, see :func:`check_pair`):

1. permuting the hidden units consistently (producer columns and biases, consumer rows) leaves the block's output
   unchanged: the hidden units pass element-wise from the producers to the consumer;
2. zeroing the consumer's rows of some units changes the output (they are used), and then scrambling those units'
   producer columns changes nothing more: they reach the output only through the consumer (a normalisation across
   the hidden units would fail this, and removing units would change what the others compute).

A candidate that fails is reported with a one-line reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from ..graph import LayerRef, walk_layers
from ..sublayers import patched_calls

__all__ = ["FfnPart", "FfnUnit", "check_pair", "dense_dims", "ffn_candidates", "find_ffn_units", "hooked_calls"]


@dataclass(frozen=True)
class FfnPart:
    """One producer or the consumer of an FFN unit: its path, its MACs in the original model, its input and output
    feature sizes and whether it has a bias."""

    path: str
    attribute: str
    macs: float
    in_dim: int
    out_dim: int
    bias: bool


@dataclass(frozen=True, eq=False)
class FfnUnit:
    """The ``channels`` hidden units of the feed-forward part of the custom layer ``block`` (its path), named
    ``"<block>/ffn"``: kept units are kept in every producer's outputs and in the consumer's inputs."""

    name: str
    block: str
    producers: tuple[FfnPart, ...]
    consumer: FfnPart
    channels: int

    @property
    def layers(self) -> tuple[str, ...]:
        """The paths of every layer the unit shrinks (producers, then the consumer)."""
        return (*(p.path for p in self.producers), self.consumer.path)

    def cost(self, keep: int) -> tuple[float, float]:
        """Exact ``(macs, params)`` of the unit's layers when ``keep`` hidden units are kept.

        Example:
            >>> up = FfnPart("b/up", "up", 6.0 * 4 * 8, 4, 8, True)
            >>> down = FfnPart("b/down", "down", 6.0 * 8 * 4, 8, 4, True)
            >>> FfnUnit("b/ffn", "b", (up,), down, 8).cost(4)
            (192.0, 40.0)
        """
        share = keep / self.channels
        macs = sum(p.macs for p in self.producers) * share + self.consumer.macs * share
        params = sum(p.in_dim * keep + (keep if p.bias else 0) for p in self.producers)
        params += keep * self.consumer.out_dim + (self.consumer.out_dim if self.consumer.bias else 0)
        return float(macs), float(params)


def dense_dims(layer: Any) -> tuple[int, int] | None:
    """``(input features, output features)`` of a layer that maps the last axis like a ``Dense`` (a plain
    ``Dense``, or an ``EinsumDense`` such as ``"btd,df->btf"`` with a 2-D kernel and a bias on the output features
    or none), else ``None``.

    Example:
        >>> import keras
        >>> layer = keras.layers.EinsumDense("btd,df->btf", output_shape=(None, 8))
        >>> layer.build((None, 3, 4))
        >>> dense_dims(layer)
        (4, 8)
    """
    if type(layer) is keras.layers.Dense and layer.built:
        return int(layer.kernel.shape[0]), int(layer.kernel.shape[1])
    if type(layer) is not keras.layers.EinsumDense or not layer.built or len(layer.kernel.shape) != 2:
        return None
    try:
        inputs, output = layer.equation.replace(" ", "").split("->")
        x, w = inputs.split(",")
    except ValueError:
        return None
    if "." in x or len(w) != 2 or x[-1] != w[0] or output != x[:-1] + w[1] or w[1] in x:
        return None
    if layer.bias is not None and tuple(layer.bias.shape) != (int(layer.kernel.shape[1]),):
        return None
    return int(layer.kernel.shape[0]), int(layer.kernel.shape[1])


@contextlib.contextmanager
def hooked_calls(layers: Sequence[Any], record: Callable[[Any, tuple, dict], None]) -> Iterator[None]:
    """While active, each call of one of ``layers`` (on any model holding them: use a working copy) on concrete
    tensors first passes ``(layer, args, kwargs)`` to ``record`` (calls while Keras traces shapes are not passed).
    Their ``call`` is put back afterwards."""

    def wrap(target: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            if _concrete(args[0] if args else next(iter(kwargs.values()), None)):
                record(target, args, kwargs)
            return original(*args, **kwargs)

        return recorded

    with patched_calls(layers, wrap):
        yield


def _concrete(tensor: Any) -> bool:
    """Whether ``tensor`` holds values (not a symbolic tensor of a shape trace)."""
    if tensor is None or isinstance(tensor, keras.KerasTensor):
        return False
    try:
        keras.ops.convert_to_numpy(tensor)
    except Exception:  # a tensor of a graph being traced (TensorFlow's scratch graphs, JAX tracers)
        return False
    return True


def _outputs(value: Any) -> list[np.ndarray]:
    return [
        np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64)
        for t in keras.tree.flatten(value)
        if hasattr(t, "shape")
    ]


def _difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max((float(np.max(np.abs(p - q))) if p.size else 0.0 for p, q in zip(a, b, strict=True)), default=0.0)


def check_pair(
    block: Any, calls: Sequence[tuple[tuple, dict]], producers: Sequence[Any], consumer: Any, seed: int = 0
) -> str | None:
    """Why the hidden units between ``producers`` and ``consumer`` (sublayers of ``block``) are not an element-wise
    FFN hidden dimension that can be pruned, or ``None`` when they are; checked by running ``block`` on the
    recorded ``calls`` (``(args, kwargs)``) with its weights changed and then restored (use a working copy)."""
    variables = [v for layer in (*producers, consumer) for v in (layer.kernel, layer.bias) if v is not None]
    saved = [(v, keras.ops.convert_to_numpy(v)) for v in variables]
    rng = np.random.default_rng(seed)
    f = int(consumer.kernel.shape[0])

    def run() -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for args, kwargs in calls:
            out.extend(_outputs(block(*args, **kwargs)))
        return out

    def assign(
        layer: Any, kernel: Callable[[np.ndarray], np.ndarray], bias: Callable[[np.ndarray], np.ndarray]
    ) -> None:
        layer.kernel.assign(kernel(keras.ops.convert_to_numpy(layer.kernel)))
        if layer.bias is not None:
            layer.bias.assign(bias(keras.ops.convert_to_numpy(layer.bias)))

    def restore() -> None:
        for variable, value in saved:
            variable.assign(value)

    try:
        base = run()
        tol = 1e-4 * (1.0 + max((float(np.max(np.abs(o))) for o in base if o.size), default=0.0))
        perm = rng.permutation(f)
        for p in producers:
            assign(p, lambda k: k[:, perm], lambda b: b[perm])
        assign(consumer, lambda k: k[perm, :], lambda b: b)
        if _difference(run(), base) > tol:
            return (
                "permuting its hidden units consistently changes the block's output: they do not pass element-wise "
                "from the producer(s) to it"
            )
        restore()
        gone = rng.choice(f, size=max(1, f // 4), replace=False)

        def zero_rows(k: np.ndarray) -> np.ndarray:
            k = k.copy()
            k[gone, :] = 0
            return k

        assign(consumer, zero_rows, lambda b: b)
        without = run()
        if _difference(without, base) <= tol:
            return "its hidden units do not reach the block's output"

        def scramble(k: np.ndarray) -> np.ndarray:
            k = k.copy()
            k[..., gone] = rng.normal(scale=1.0 + float(np.std(k)), size=k[..., gone].shape)
            return k

        for p in producers:
            assign(p, scramble, scramble)
        if _difference(run(), without) > tol:
            return (
                "its hidden units reach the block's output other than through it (e.g. a normalisation across them), "
                "so removing some would change the others"
            )
        return None
    finally:
        restore()


def _block_refs(model: Any) -> dict[int, tuple[LayerRef, list[LayerRef]]]:
    """``{id(custom layer): (its ref, the refs of the sublayers it runs, in call order)}``."""
    refs = walk_layers(model, sublayers=True)
    top = {id(ref.layer): ref for ref in refs if ref.owner is None}
    blocks: dict[int, tuple[LayerRef, list[LayerRef]]] = {}
    for ref in refs:
        if ref.owner is not None and id(ref.owner) in top:
            blocks.setdefault(id(ref.owner), (top[id(ref.owner)], []))[1].append(ref)
    return blocks


def _candidates(subs: list[LayerRef], block_calls: int) -> list[tuple[LayerRef, list[list[LayerRef]]]]:
    """Per consumer candidate, the producer sets to try (all producers of its size before it when at most two,
    then the nearest one, then the nearest two)."""
    if block_calls != 1:  # a block run twice (shared) would need its FFN fitted on both calls' inputs: not yet
        return []
    dense = [(ref, dense_dims(ref.layer)) for ref in subs if ref.calls == block_calls]
    dense = [(ref, dims) for ref, dims in dense if dims is not None]
    found = []
    for i, (ref, (f, _)) in enumerate(dense):
        before = [r for r, (_, out) in dense[:i] if out == f]
        if not before:
            continue
        sets: list[list[LayerRef]] = []
        for option in (before if len(before) <= 2 else [], before[-1:], before[-2:]):
            if option and option not in sets:
                sets.append(option)
        found.append((ref, sets))
    return found


def ffn_candidates(model: Any) -> dict[str, list[str]]:
    """``{consumer path: [producer paths]}`` of the FFN-like pairs inside ``model``'s custom layers, by their shapes
    only (no data: what :func:`find_ffn_units` would check; ``tfcompress inspect`` lists them)."""
    found: dict[str, list[str]] = {}
    for block_ref, subs in _block_refs(model).values():
        for consumer, sets in _candidates(subs, block_ref.calls):
            found[consumer.path] = [r.path for r in sets[0]]
    producers = {path for paths in found.values() for path in paths}
    return {c: p for c, p in found.items() if c not in producers}  # a gate read as an "output" of another gate


def find_ffn_units(
    model: Any, work: Any, inputs: Any, *, seed: int = 0, examples: int = 4
) -> tuple[list[FfnUnit], dict[str, str]]:
    """The FFN units inside the custom layers of ``model``, checked on ``work`` (a working copy with the same
    layer names; its weights are restored) run on the first ``examples`` of ``inputs`` (model inputs: an array or
    a dict of arrays with the batch axis first), and ``{path: reason}`` for FFN-like layers that failed a check.

    Example:
        >>> import keras, numpy as np
        >>> class Block(keras.layers.Layer):
        ...     def __init__(self, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.up = keras.layers.Dense(16, activation="gelu")
        ...         self.down = keras.layers.Dense(4)
        ...     def call(self, x):
        ...         return x + self.down(self.up(x))
        >>> x = keras.Input((3, 4))
        >>> model = keras.Model(x, Block(name="blk")(x))
        >>> work = keras.models.clone_model(model)
        >>> work.set_weights(model.get_weights())
        >>> units, reasons = find_ffn_units(model, work, np.ones((2, 3, 4), "float32"))
        >>> [(u.name, u.channels, [p.attribute for p in u.producers], u.consumer.attribute) for u in units]
        [('blk/ffn', 16, ['up'], 'down')]
    """
    blocks = _block_refs(model)
    if not blocks:
        return [], {}
    work_blocks = {ref.path: (ref, subs) for ref, subs in _block_refs(work).values()}
    plans = []
    for block_ref, subs in blocks.values():
        candidates = _candidates(subs, block_ref.calls)
        if candidates and block_ref.path in work_blocks:
            plans.append((block_ref, candidates))
    if not plans:
        return [], {}
    recorded: dict[int, list[tuple[tuple, dict]]] = {}
    targets = [work_blocks[ref.path][0].layer for ref, _ in plans]
    sample = keras.tree.map_structure(lambda a: a[:examples], inputs)
    with hooked_calls(targets, lambda layer, args, kwargs: recorded.setdefault(id(layer), []).append((args, kwargs))):
        work(sample, training=False)
    units: list[FfnUnit] = []
    reasons: dict[str, str] = {}
    for block_ref, candidates in plans:
        work_ref, work_subs = work_blocks[block_ref.path]
        by_attribute = {ref.attribute: ref.layer for ref in work_subs}  # inner names may differ in a copy
        calls = recorded.get(id(work_ref.layer), [])
        taken: set[str] = set()
        for consumer, sets in candidates:
            if not calls:
                reasons[consumer.path] = "its block was not called when the model ran on the data"
                break
            problem = None
            if consumer.attribute not in by_attribute or any(r.attribute not in by_attribute for s in sets for r in s):
                continue
            for option in sets:
                if any(r.path in taken for r in option):
                    continue
                problem = check_pair(
                    work_ref.layer,
                    calls,
                    [by_attribute[r.attribute] for r in option],
                    by_attribute[consumer.attribute],
                    seed,
                )
                if problem is None:
                    units.append(_unit(block_ref.path, option, consumer))
                    taken.update(r.path for r in option)
                    taken.add(consumer.path)
                    break
            if problem is not None:
                reasons[consumer.path] = f"not the output layer of a prunable FFN: {problem}"
    producers = {p.path for u in units for p in u.producers}
    reasons = {path: why for path, why in reasons.items() if path not in producers}  # tried as an output, is an input
    names = [u.name for u in units]
    for i, unit in enumerate(units):  # a second FFN in one block: "<block>/ffn_1"
        if names.count(unit.name) > 1:
            index = names[:i].count(unit.name)
            if index:
                units[i] = FfnUnit(f"{unit.name}_{index}", unit.block, unit.producers, unit.consumer, unit.channels)
    return units, reasons


def _part(ref: LayerRef) -> FfnPart:
    """The part at ``ref``, with its MACs at the input shape its block's call was traced with (every call)."""
    in_dim, out_dim = dense_dims(ref.layer)  # type: ignore[misc]
    positions = 1
    for d in (ref.input_shape or (None, in_dim))[1:-1]:
        positions *= int(d) if d is not None else 0
    macs = float(positions * in_dim * out_dim * ref.calls)
    return FfnPart(ref.path, str(ref.attribute), macs, in_dim, out_dim, ref.layer.bias is not None)


def _unit(block: str, producers: list[LayerRef], consumer: LayerRef) -> FfnUnit:
    parts = tuple(_part(r) for r in producers)
    return FfnUnit(f"{block}/ffn", block, parts, _part(consumer), parts[0].out_dim)
