"""Nested models inlined into the outer graph, so that channel pruning can follow channels through them.

Transfer learning builds models like ``Sequential([base, GlobalAveragePooling2D(), Dense(10)])`` or
``outputs = head(base(inputs))``: the convolutions sit inside a nested Functional/Sequential model, where channel
pruning cannot reach them (a nested model is one opaque node of the outer graph). :func:`inline_nested_models`
returns an equivalent *flat* model: each nested model called once is replaced, in the outer graph, by the layers it
holds, wired to the tensors it was called on. Same computation, same weights (copied), one graph.

It works on the models' configs (``get_config`` / ``from_config``, Keras' own serialisation), so every layer is
re-created the way ``keras.models.clone_model`` re-creates it, and nothing of the user's model is touched.

A nested model is left nested (with the reason) when it is called more than once (shared), when it shares a
layer object with the outer model, when a tensor is passed to it as a keyword argument, or when it is a subclassed
model (no graph to inline). Layer names are kept; a name that is already used outside the nested model becomes
``"<nested>_<name>"``. :attr:`Inlined.paths` maps every flat name back to the layer's path in the original model
(``"base/conv1"``), the path syntax used everywhere else.

Example:
    >>> import keras
    >>> base = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c1")], name="base")
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), base, keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> inlined = inline_nested_models(model)
    >>> [layer.name for layer in inlined.model.layers][1]
    'c1'
    >>> inlined.paths["c1"]
    'base/c1'
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import keras

from ..graph import is_graph_model

__all__ = ["Inlined", "inline_nested_models"]

_GRAPH_CLASSES = ("Functional", "Sequential")


@dataclass
class Inlined:
    """A flat copy of a model whose nested models were inlined.

    Attributes:
        model: the flat model (new layers holding copies of the original weights).
        paths: every flat layer's name -> its path in the original model (``"base/conv1"`` or ``"dense"``).
        inlined: paths of the nested models whose layers now sit in the outer graph.
        kept: paths of nested models left nested -> why.
    """

    model: keras.Model
    paths: dict[str, str]
    inlined: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)

    by_id: dict[int, str] = field(default_factory=dict, repr=False)  # id(original layer) -> flat name

    def flat_name(self, layer: Any) -> Any:
        """What names ``layer`` in the flat model: a path of the original model (``"base/conv1"``) or one of its
        layer objects becomes the flat layer's name; anything else is returned as it is."""
        if isinstance(layer, str):
            for name, original in self.paths.items():
                if original == layer:
                    return name
            return layer
        return self.by_id.get(id(layer), layer)


# ---------------------------------------------------------------- serialised tensors


def _is_triple(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 3 and isinstance(value[0], str)


def _tensor(history: list, shape: Any = None, dtype: Any = "float32") -> dict[str, Any]:
    """A serialised symbolic tensor: the output ``history = [layer, node, index]``."""
    return {
        "class_name": "__keras_tensor__",
        "config": {"shape": shape if shape is not None else [None], "dtype": dtype, "keras_history": list(history)},
    }


def _is_tensor(value: Any) -> bool:
    return isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"


def _tensors(value: Any) -> list[dict[str, Any]]:
    """The serialised tensors in ``value`` (a call's args, nested lists/dicts), in order."""
    if _is_tensor(value):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


def _triples(value: Any) -> list[list]:
    """The ``[layer, node, index]`` triples of an ``input_layers`` / ``output_layers`` structure, in order."""
    if _is_triple(value):
        return [list(value)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _triples(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _triples(v)]
    return []


def _map_histories(value: Any, replace: Any) -> Any:
    """``value`` with each serialised tensor's history (and each bare triple) passed through ``replace``, which
    returns a new serialised tensor (or None to keep it)."""
    if _is_tensor(value):
        new = replace(value["config"]["keras_history"])
        if new is None:
            return value
        out = copy.deepcopy(value)
        out["config"]["keras_history"] = list(new["config"]["keras_history"])
        return out
    if _is_triple(value):
        new = replace(list(value))
        return list(value) if new is None else list(new["config"]["keras_history"])
    if isinstance(value, dict):
        return {k: _map_histories(v, replace) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_histories(v, replace) for v in value]
    if isinstance(value, tuple):
        return tuple(_map_histories(v, replace) for v in value)
    return value


# ---------------------------------------------------------------- configs


def _sequential_as_functional(config: dict[str, Any], input_shape: Any) -> dict[str, Any]:
    """A Sequential model's config written as a Functional one (a chain of calls)."""
    entries = [copy.deepcopy(e) for e in config["layers"]]
    layers: list[dict[str, Any]] = []
    if entries and entries[0].get("class_name") == "InputLayer":
        first = entries.pop(0)
        name = first["config"]["name"]
        dtype = first["config"].get("dtype", "float32")
    else:
        shape = config.get("build_input_shape") or input_shape
        if shape is None:
            raise ValueError(f"the Sequential model '{config.get('name')}' is not built (its input shape is unknown)")
        name, dtype = f"{config.get('name', 'sequential')}_input", "float32"
        first = {
            "module": "keras.layers",
            "class_name": "InputLayer",
            "config": {"batch_shape": list(shape), "dtype": dtype, "sparse": False, "name": name},
            "registered_name": None,
        }
    first["name"] = name
    first["inbound_nodes"] = []
    layers.append(first)
    previous = [name, 0, 0]
    for entry in entries:
        entry["name"] = entry["config"]["name"]
        entry["inbound_nodes"] = [{"args": [_tensor(previous, dtype=dtype)], "kwargs": {}}]
        layers.append(entry)
        previous = [entry["name"], 0, 0]
    return {
        "name": config.get("name"),
        "trainable": config.get("trainable", True),
        "layers": layers,
        "input_layers": [name, 0, 0],
        "output_layers": previous,
    }


def _functional_config(entry_config: dict[str, Any], class_name: str, input_shape: Any = None) -> dict[str, Any]:
    if class_name == "Sequential":
        return _sequential_as_functional(entry_config, input_shape)
    return copy.deepcopy(entry_config)


def _why_not_inlined(entry: dict[str, Any], layer: Any, outer_objects: dict[str, Any]) -> str | None:
    nodes = entry.get("inbound_nodes", [])
    if len(nodes) != 1:
        return f"a nested model called {len(nodes)} times (shared), so its layers cannot be inlined"
    node = nodes[0]
    if not isinstance(node, dict) or _tensors(node.get("kwargs", {})):
        return "a nested model called with a tensor keyword argument, so its layers are not inlined"
    if len(node.get("args", [])) != 1:
        return "a nested model called with several positional arguments, so its layers are not inlined"
    if layer is not None:
        inner = {id(sub) for sub in layer.layers}
        shared = [name for name, obj in outer_objects.items() if id(obj) in inner]
        if shared:
            return f"a nested model that shares the layer '{shared[0]}' with the outer model"
    return None


def _match_inputs(arg: Any, input_layers: Any) -> dict[str, dict[str, Any]] | None:
    """``{inner input layer: outer serialised tensor}``, matching the call's argument to the inner inputs."""
    if isinstance(input_layers, dict) and isinstance(arg, dict) and not _is_tensor(arg):
        if set(arg) != set(input_layers):
            return None
        return {str(_triples(input_layers[k])[0][0]): _tensors(arg[k])[0] for k in input_layers}
    names = [t[0] for t in _triples(input_layers)]
    tensors = _tensors(arg)
    if len(names) != len(tensors):
        return None
    return dict(zip(names, tensors, strict=True))


def _inline_entry(
    config: dict[str, Any], index: int, inner: dict[str, Any], used: set[str]
) -> tuple[dict[str, str], bool]:
    """Replace ``config["layers"][index]`` (a nested model's entry) by ``inner``'s layers, in place.
    Returns ``{new name: inner name}`` and whether it worked."""
    entry = config["layers"][index]
    outer_name = entry["name"]
    arg = entry["inbound_nodes"][0]["args"][0]
    feeds = _match_inputs(arg, inner["input_layers"])
    if feeds is None:
        return {}, False
    inputs = set(feeds)
    rename: dict[str, str] = {}
    for e in inner["layers"]:
        if e["name"] in inputs:
            continue
        new = e["name"]
        if new in used:
            base = f"{outer_name}_{e['name']}"
            new, k = base, 1
            while new in used:
                k += 1
                new = f"{base}_{k}"
        used.add(new)
        rename[e["name"]] = new

    def inner_ref(history: list) -> dict[str, Any] | None:
        if history[0] in feeds:
            return feeds[history[0]]
        if history[0] in rename:
            return _tensor([rename[history[0]], history[1], history[2]])
        return None

    new_entries = []
    for e in inner["layers"]:
        if e["name"] in inputs:
            continue
        e = copy.deepcopy(e)
        e["inbound_nodes"] = _map_histories(e.get("inbound_nodes", []), inner_ref)
        if rename[e["name"]] != e["name"]:
            e["config"] = dict(e["config"], name=rename[e["name"]])
        e["name"] = rename[e["name"]]
        new_entries.append(e)
    outputs = [_map_histories(t, inner_ref) for t in _triples(inner["output_layers"])]

    def outer_ref(history: list) -> dict[str, Any] | None:
        if history[0] != outer_name:
            return None
        return _tensor(outputs[int(history[2])])

    config["layers"][index : index + 1] = new_entries
    for e in config["layers"]:
        e["inbound_nodes"] = _map_histories(e.get("inbound_nodes", []), outer_ref)
    config["output_layers"] = _map_histories(config["output_layers"], outer_ref)
    return {new: old for old, new in rename.items()}, True


# ---------------------------------------------------------------- the flat model


def _objects(model: keras.Model, prefix: str = "") -> dict[str, Any]:
    """Every layer of ``model`` and of its nested graph models, by path."""
    found = {}
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        found[path] = layer
        if is_graph_model(layer):
            found.update(_objects(layer, f"{path}/"))
    return found


def _custom_objects(objects: dict[str, Any]) -> dict[str, type]:
    classes: dict[str, type] = {}
    for layer in objects.values():
        classes.setdefault(type(layer).__name__, type(layer))
    return classes


def inline_nested_models(model: keras.Model) -> Inlined | None:
    """A flat copy of ``model`` with its nested Functional/Sequential models inlined, or None when it has none
    that can be inlined.

    Args:
        model: a built Functional or Sequential model. It is not modified.

    Returns:
        an :class:`Inlined` (the flat model, flat name -> original path, what was inlined and what was kept
        nested, with the reason), or None when no nested model could be inlined (including when there is none).
    """
    if not is_graph_model(model):
        return None
    objects = _objects(model)
    if not any(is_graph_model(layer) for layer in model.layers):
        return None
    if isinstance(model, keras.Sequential):
        config = _sequential_as_functional(model.get_config(), tuple(model.inputs[0].shape))
    else:
        config = model.get_config()
    paths = {e["name"]: e["name"] for e in config["layers"]}
    used = set(paths)
    result = Inlined(model=model, paths={}, inlined=[], kept={})
    changed = True
    while changed:
        changed = False
        for index, entry in enumerate(config["layers"]):
            if entry.get("class_name") not in _GRAPH_CLASSES or paths.get(entry["name"]) in result.kept:
                continue
            path = paths[entry["name"]]
            layer = objects.get(path)
            outer = {paths[e["name"]]: objects.get(paths[e["name"]]) for e in config["layers"] if e is not entry}
            why = _why_not_inlined(entry, layer, {k: v for k, v in outer.items() if v is not None})
            if why is None:
                shape = tuple(layer.inputs[0].shape) if layer is not None and layer.inputs else None
                inner = _functional_config(entry["config"], entry["class_name"], shape)
                renamed, ok = _inline_entry(config, index, inner, used)
                if ok:
                    for new, old in renamed.items():
                        paths[new] = f"{path}/{old}"
                    used.discard(entry["name"])
                    del paths[entry["name"]]
                    result.inlined.append(path)
                    changed = True
                    break
                why = "a nested model whose inputs do not match the way it is called"
            result.kept[path] = why
    if not result.inlined:
        return None
    flat = keras.Model.from_config(config, custom_objects=_custom_objects(objects))
    for layer in flat.layers:
        source = objects.get(paths.get(layer.name, ""))
        if source is not None and layer.weights:
            layer.set_weights(source.get_weights())
    if getattr(model, "compiled", False):  # the pruned model is built from the flat one: keep the user's compile
        try:
            flat.compile_from_config(model.get_compile_config())
        except Exception:  # a custom loss or metric that cannot be re-created from its config: left uncompiled
            pass
    result.model = flat
    result.paths = {layer.name: paths.get(layer.name, layer.name) for layer in flat.layers}
    result.by_id = {id(objects[path]): name for name, path in result.paths.items() if path in objects}
    return result


def _translated_parameters(parameters: Any, inlined: Inlined) -> Any:
    """A copy of channel-pruning ``parameters`` whose layer names/objects/paths name the flat model's layers."""
    params = copy.copy(parameters.params)
    if hasattr(params, "modules_to_ignore"):
        params.modules_to_ignore = [inlined.flat_name(m) for m in params.modules_to_ignore]
    if hasattr(params, "list_of_module_comp_ratio_pairs"):
        params.list_of_module_comp_ratio_pairs = [
            (inlined.flat_name(m), r) for m, r in params.list_of_module_comp_ratio_pairs
        ]
    out = copy.copy(parameters)
    out.params = params
    return out


def inline_for_pruning(model: keras.Model, work: keras.Model, parameters: Any) -> tuple[Any, Any, Any, str | None]:
    """``(model, work, parameters, note)`` for channel pruning: the flat model and working copy, the parameters
    naming their layers, and a note for the stats, when ``model`` has nested models to inline; else the arguments
    unchanged and None."""
    inlined = inline_nested_models(model)
    if inlined is None:
        return model, work, parameters, None
    flat_work = inline_nested_models(work)
    if flat_work is None or [layer.name for layer in flat_work.model.layers] != [
        layer.name for layer in inlined.model.layers
    ]:
        raise RuntimeError(f"model '{model.name}': its working copy did not inline like the model itself")
    renamed = {name: path for name, path in inlined.paths.items() if "/" in path and path.rsplit("/", 1)[1] != name}
    note = (
        f"channel pruning inlined the nested model(s) {', '.join(repr(p) for p in inlined.inlined)}: their layers "
        "are layers of the compressed model itself (same computation), named as in the stats"
        + (f"; renamed to avoid a clash: {', '.join(f'{p} -> {n}' for n, p in renamed.items())}" if renamed else "")
    )
    if inlined.kept:
        note += "; left nested: " + "; ".join(f"'{p}' ({why})" for p, why in inlined.kept.items())
    return inlined.model, flat_work.model, _translated_parameters(parameters, inlined), note
