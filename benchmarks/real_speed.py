"""Do fewer MACs mean faster inference on a CPU? Uniform-rank decompositions of real architectures, measured.

For ResNet50, VGG16 and MobileNetV2 (``weights=None``) and each scheme (weight SVD, spatial SVD, Tucker-2),
every eligible ``Conv2D`` (kernel larger than 1x1 for spatial SVD and Tucker-2) is rewritten at the rank
``tfc.rank_for_ratio(layer, target, scheme)`` gives for the MAC target, with ``tfc.rewrite_model``; for channel
pruning, every channel group keeps one common fraction of its channels (kernel magnitude), bisected to the MAC
target, and the model is winnowed with ``tfc.pruning.apply_pruning`` ("layers_rewritten" counts the groups). Reported:
MAC and parameter ratios (``tfc.model_cost``), the ``.keras`` file size ratio, and CPU latency ratios at batch 1
and 8 measured side by side with the original (interleaved runs, median after warm-up) under TensorFlow (a
compiled ``tf.function``) and the TFLite interpreter, and how much of the ideal speed-up ``1 / MAC ratio`` the
measured speed-up reaches. In full mode, peak memory (``ru_maxrss``) of inference and of one training step is
measured in a fresh subprocess per model and measurement (peak RSS above the RSS after importing TensorFlow).
At the layer-breakdown target (0.5), every changed layer is also timed alone, original against compressed, at
its real input shape, to show which layers lose time and how much of the model's time they held.

    python benchmarks/real_speed.py --quick     # 64x64 inputs, target 0.5, TFLite for MobileNetV2 only
    python benchmarks/real_speed.py             # 224x224 inputs, targets 0.75/0.5/0.3, TFLite and memory for all
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import subprocess
import sys
import tempfile
import warnings
from typing import Any

import _common
from real_speed_report import markdown

SCHEMES = ("weight_svd", "spatial_svd", "tucker", "channel_pruning")
MODELS = ("ResNet50", "VGG16", "MobileNetV2", "ViT")
#: the schemes measured per model where not all of them (the ViT's only convolution is its patch embedding)
MODEL_SCHEMES = {"ViT": ("weight_svd", "channel_pruning")}
#: the ViT's layers left alone by the uniform recipes: the patch embedding (a 3-channel convolution, rank <= 3)
#: and the classifier
VIT_IGNORED = ("patch_embedding",)


def build(name: str, size: int) -> Any:
    """A ``keras.applications`` model (``weights=None``), or ``"ViT"``: the benchmarks' ViT (``vit.py``) at
    patch 16 with a class token (197 tokens at 224x224), hidden size 256, 4 pre-norm blocks of 4-head attention and
    a 1024-unit gelu feed-forward layer, 1000 classes: a ViT-Base-shaped encoder block, 4 deep and 3x narrower."""
    import keras

    if name == "ViT":
        import vit

        return vit.vit(
            image_size=size, channels=3, patch_size=16, hidden_dim=256, num_layers=4, num_heads=4, mlp_dim=1024,
            num_classes=1000, pool="class", classifier="logits", name="ViT",
        )  # fmt: skip
    return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))


def uniform_pruning(model: Any, target: float) -> tuple[Any, int]:
    """``model`` with every channel group (``tfc.pruning.prune_units``) keeping one common fraction of its channels,
    chosen by kernel magnitude, the fraction bisected so the MAC ratio is at most ``target``; and the group count."""
    import numpy as np

    import tfcompress as tfc
    from tfcompress.pruning import apply_pruning, magnitude_channels, prune_units

    units, _ = prune_units(model)
    macs = tfc.model_cost(model).macs
    norms = {}
    for unit in units:
        slot = unit.consumers[0]
        kernel = model.get_layer(slot.layer).get_weights()[0]
        norms[unit.name] = np.take(kernel, slot.index, axis=-2)

    def pruned(fraction: float) -> Any:
        kept = {u.name: magnitude_channels(norms[u.name], max(1, round(fraction * u.channels))) for u in units}
        return apply_pruning(model, kept, units=units)

    lo, hi, best = 0.0, 1.0, None
    for _ in range(7):
        mid = (lo + hi) / 2
        small = pruned(mid)
        if tfc.model_cost(small).macs / macs <= target:
            lo, best = mid, small
        else:
            hi = mid
    return (best if best is not None else pruned(lo)), len(units)


def uniform_plan(model: Any, scheme: str, target: float) -> dict[str, tuple[str, Any]]:
    """Every eligible ``Conv2D`` at the rank ``tfc.rank_for_ratio`` gives for ``target``. The ViT: every attention
    projection and feed-forward ``Dense`` (weight SVD; not the patch embedding nor the classifier) at the rank for
    one per-layer ratio, bisected so the model's MAC ratio is the largest not above ``target`` (the attention
    products Q.K^T and A.V do not shrink, so each layer must go below the target)."""
    import tfcompress as tfc

    if model.name == "ViT":
        import accuracy_methods

        ratio, _ = accuracy_methods.uniform_ratio_for(model, target, VIT_IGNORED)
        return {
            path: (scheme, rank) for path, rank in accuracy_methods.uniform_ranks(model, ratio, VIT_IGNORED).items()
        }
    return {
        layer.name: (scheme, tfc.rank_for_ratio(layer, target, scheme))
        for layer in _common.eligible_convs(model, scheme)
    }


class TFRunner:
    """A compiled forward pass of one model on one fixed batch."""

    def __init__(self, model: Any, x: Any) -> None:
        import tensorflow as tf

        self.x = tf.constant(x)
        self.fn = tf.function(lambda t: model(t, training=False))
        self.fn(self.x)  # trace outside the timed runs

    def __call__(self) -> None:
        self.fn(self.x).numpy()


def tflite_bytes(model: Any) -> bytes:
    import tensorflow as tf

    with contextlib.redirect_stdout(io.StringIO()):  # the converter's export prints its signature
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()


class TFLiteRunner:
    def __init__(self, flatbuffer: bytes, x: Any) -> None:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=os.cpu_count())
        detail = self.interpreter.get_input_details()[0]
        self.interpreter.resize_tensor_input(detail["index"], list(x.shape))
        self.interpreter.allocate_tensors()
        self.interpreter.set_tensor(detail["index"], x)

    def __call__(self) -> None:
        self.interpreter.invoke()


def keras_file_size(model: Any, folder: str, name: str) -> tuple[int, str]:
    path = os.path.join(folder, f"{name}.keras")
    model.save(path)
    return os.path.getsize(path), path


MEMORY_PROBE = r"""
import json, os, resource, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np, keras, tensorflow as tf
import tfcompress  # registers the decomposed layers
path, what, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, sys.argv[4])
import vit  # registers the benchmarks' ViT layers
def status_mb(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
out = {"import_peak_mb": status_mb("VmHWM"), "after_import_mb": status_mb("VmRSS")}
try:  # reset the high-water mark to the current size (Linux >= 4.0), so import-time peaks do not count
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    out["peak_reset"] = True
except OSError:
    out["peak_reset"] = False
if what != "none":
    model = keras.models.load_model(path)
    out["after_load_mb"] = status_mb("VmRSS")
    x = np.random.default_rng(0).standard_normal((batch, *model.input_shape[1:])).astype("float32")
    if what == "inference":
        fn = tf.function(lambda t: model(t, training=False))
        for _ in range(3):
            fn(tf.constant(x)).numpy()
    else:
        y = np.random.default_rng(1).integers(0, model.output_shape[-1], size=batch)
        model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
        model.train_on_batch(x, y)
out["peak_mb"] = status_mb("VmHWM")
print(json.dumps(out))
"""


def peak_memory_mb(path: str, what: str, batch: int) -> dict[str, float]:
    """Peak RSS (VmHWM, reset after importing TensorFlow) of a fresh process that loads ``path`` and runs
    inference or one training step, and its RSS right after the imports."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, path, what, str(batch), _common.HERE],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _memory_ratio(compressed: dict[str, float], original: dict[str, float]) -> float | None:
    above = original["peak_mb"] - original["after_import_mb"]
    return (compressed["peak_mb"] - compressed["after_import_mb"]) / above if above > 0 else None


def speed_entry(timed: dict[str, dict[str, Any]], ideal_speedup: float) -> dict[str, Any]:
    """One latency comparison from ``interleaved_medians`` of "original" and "compressed", against the MAC limit."""
    original, compressed = timed["original"]["median_s"], timed["compressed"]["median_s"]
    speedup = original / compressed
    return {
        "original_ms": 1000 * original,
        "compressed_ms": 1000 * compressed,
        "latency_ratio": 1.0 / speedup,
        "speedup": speedup,
        "fraction_of_ideal_speedup": speedup / ideal_speedup,
        "runs": timed["original"]["runs"],
    }


def run_model(name: str, args: Any, settings: dict[str, Any], folder: str) -> dict[str, Any]:
    import tfcompress as tfc

    size = settings["size"]
    model = build(name, size)
    cost = tfc.model_cost(model)
    use_tflite = settings["tflite"] is True or name in settings["tflite"]
    inputs = {b: _common.random_images((size, size, 3), b, args.seed) for b in settings["batches"]}
    tf_original = {b: TFRunner(model, inputs[b]) for b in settings["batches"]}
    original_flatbuffer = tflite_bytes(model) if use_tflite else None
    original_size, original_path = keras_file_size(model, folder, f"{name}_original")
    memory_original = None
    if settings["memory"]:
        memory_original = {
            what: peak_memory_mb(original_path, what, settings["memory_batch"]) for what in ("inference", "train_step")
        }
    os.unlink(original_path)
    rows = []
    for scheme in MODEL_SCHEMES.get(name, SCHEMES):
        for target in settings["targets"]:
            print(f"real_speed: {name} {size}x{size} {scheme} target {target}", flush=True)
            if scheme == "channel_pruning":
                small, rewritten = uniform_pruning(model, target)
            else:
                plan = uniform_plan(model, scheme, target)
                small, rewritten = tfc.rewrite_model(model, plan), len(plan)
            small_cost = tfc.model_cost(small)
            mac_ratio = small_cost.macs / cost.macs
            row: dict[str, Any] = {
                "scheme": scheme,
                "target": target,
                "layers_rewritten": rewritten,
                "mac_ratio": mac_ratio,
                "param_ratio": small_cost.params / cost.params,
                "ideal_speedup": 1.0 / mac_ratio,
            }
            size_bytes, small_path = keras_file_size(small, folder, f"{name}_{scheme}_{target}")
            row["keras_file_size_ratio"] = size_bytes / original_size
            if settings["memory"]:
                memory = {
                    what: peak_memory_mb(small_path, what, settings["memory_batch"])
                    for what in ("inference", "train_step")
                }
                row["peak_memory_mb"] = {"original": memory_original, "compressed": memory}
                # ratios of the memory above what importing TensorFlow alone takes
                row["peak_memory_ratio"] = {what: _memory_ratio(memory[what], memory_original[what]) for what in memory}
            os.unlink(small_path)
            for batch in settings["batches"]:
                timed = _common.interleaved_medians(
                    {"original": tf_original[batch], "compressed": TFRunner(small, inputs[batch])},
                    settings["warmup"],
                    settings["repeats"],
                )
                row[f"tf_b{batch}"] = speed_entry(timed, row["ideal_speedup"])
            if use_tflite:
                small_flatbuffer = tflite_bytes(small)
                row["tflite_size_ratio"] = len(small_flatbuffer) / len(original_flatbuffer)
                for batch in settings["batches"]:
                    timed = _common.interleaved_medians(
                        {
                            "original": TFLiteRunner(original_flatbuffer, inputs[batch]),
                            "compressed": TFLiteRunner(small_flatbuffer, inputs[batch]),
                        },
                        settings["warmup"],
                        settings["repeats"],
                    )
                    row[f"tflite_b{batch}"] = speed_entry(timed, row["ideal_speedup"])
            if target in settings["layer_targets"]:
                whole = {b: row[f"tf_b{b}"]["original_ms"] for b in settings["batches"]}
                row["layer_breakdown"] = layer_breakdown(
                    model,
                    small,
                    changed_layers(cost, small_cost),
                    settings["layer_batches"],
                    settings["warmup"],
                    settings["repeats"],
                    args.seed,
                    whole,
                )
            rows.append(row)
            del small
            gc.collect()
    return {
        "model": name,
        "run": {"settings": settings, "machine": _common.machine_info()},
        "input_size": size,
        "original_macs": cost.macs,
        "original_params": cost.params,
        "original_keras_file_bytes": original_size,
        "tflite": use_tflite,
        "results": rows,
    }


def changed_layers(cost: Any, small_cost: Any) -> list[tuple[str, float]]:
    """Names of the layers whose MACs differ between two ``tfc.model_cost`` results (rewritten or pruned), in model
    order, with each one's MAC ratio."""
    before, after = cost.layers, small_cost.layers
    return [
        (name, after[name].macs / row.macs)
        for name, row in before.items()
        if row.macs > 0 and name in after and after[name].macs != row.macs
    ]


def _alone(layer: Any) -> tuple[Any, tuple[int, ...]]:
    """A one-layer model holding a fresh copy of ``layer`` (config and weights) at its real input shape.

    A ``MultiHeadAttention`` (self-attention), or the ``RewiredLayer`` holding one with ``SVDEinsumDense``
    projections, is called itself on a new input instead (a layer may be called in more than one model); its weights
    are the model's own, and no copy is needed since nothing trains it."""
    import keras

    from tfcompress.latency import _fresh_copy, layer_input_shape
    from tfcompress.layers import RewiredLayer

    inner = layer.layer if isinstance(layer, RewiredLayer) else layer  # a MultiHeadAttention with swapped projections
    if isinstance(inner, keras.layers.MultiHeadAttention):
        shape = tuple(layer.input[0].shape[1:])
        inputs = keras.Input(shape)
        return keras.Model(inputs, layer(inputs, inputs)), shape
    shape = layer_input_shape(layer)
    inputs = keras.Input(shape)
    return keras.Model(inputs, _fresh_copy(layer, (None, *shape))(inputs)), shape


def _identity(shape: tuple[int, ...]) -> Any:
    import keras

    inputs = keras.Input(shape)
    return keras.Model(inputs, keras.layers.Identity()(inputs))


def layer_breakdown(
    model: Any,
    small: Any,
    names: list[tuple[str, float]],
    batches: list[int],
    warmup: int,
    repeats: int,
    seed: int,
    whole_ms: dict[int, float],
) -> dict[str, Any]:
    """Each changed layer timed alone (TensorFlow, compiled), original and compressed side by side.

    Per batch: the changed layers' share of the original model's time (the rest bounds the speed-up, as Amdahl's
    law says), their summed speed-up against the ideal for their MACs, and every layer's speed-up and "lost"
    milliseconds: its compressed time minus what it would take if time shrank like its MACs.
    """
    rows = []
    for name, mac_ratio in names:  # (layer, MAC ratio), as changed_layers gives them
        original, shape = _alone(model.get_layer(name))
        compressed, small_shape = _alone(small.get_layer(name))
        identity = _identity(shape)
        row: dict[str, Any] = {
            "layer": name,
            "class": type(small.get_layer(name)).__name__,
            "input_shape": list(shape),
            "mac_ratio": mac_ratio,
        }
        for batch in batches:
            x = _common.random_images(shape, batch, seed)
            timed = _common.interleaved_medians(
                {
                    "original": TFRunner(original, x),
                    "compressed": TFRunner(compressed, _common.random_images(small_shape, batch, seed)),
                    "call": TFRunner(identity, x),
                },
                warmup,
                repeats,
            )
            # a call's fixed cost (dispatch, copying the result out) is timed with an identity model on the same
            # input and taken off both, so small layers are not drowned by it
            call_ms = 1000 * timed["call"]["median_s"]
            o_ms, c_ms = (max(1000 * timed[k]["median_s"] - call_ms, 1e-3) for k in ("original", "compressed"))
            row[f"b{batch}"] = {
                "original_ms": o_ms,
                "compressed_ms": c_ms,
                "call_overhead_ms": call_ms,
                "speedup": o_ms / c_ms,
                "lost_ms": c_ms - o_ms * mac_ratio,
            }
        rows.append(row)
        del original, compressed, identity
    summary = {}
    for batch in batches:
        key = f"b{batch}"
        o_sum = sum(r[key]["original_ms"] for r in rows)
        c_sum = sum(r[key]["compressed_ms"] for r in rows)
        ideal_c = sum(r[key]["original_ms"] * r["mac_ratio"] for r in rows)
        worst = sorted(rows, key=lambda r: -r[key]["lost_ms"])[:5]
        summary[key] = {
            "changed_layers": len(rows),
            "share_of_model_time": o_sum / whole_ms[batch] if whole_ms.get(batch) else None,
            "changed_layers_speedup": o_sum / c_sum if c_sum > 0 else None,
            "changed_layers_ideal_speedup": o_sum / ideal_c if ideal_c > 0 else None,
            "slower_than_original": [r["layer"] for r in rows if r[key]["speedup"] < 1.0],
            "most_time_lost": [
                {"layer": r["layer"], "mac_ratio": r["mac_ratio"], **r[key]} for r in worst if r[key]["lost_ms"] > 0
            ],
        }
    return {"layers": rows, "summary": summary}


def _earlier_models(
    path: str, quick: bool, models: list[str]
) -> tuple[list[dict[str, Any]], list[str], dict[str, dict[str, Any]]]:
    """The models of an earlier results file of the same mode that this run does not measure again (``--append``),
    that file's ``notes`` (what whoever ran it recorded about the run; they are carried over, not lost), and the
    earlier entries of the models this run does measure (see :func:`_with_earlier_rows`).

    Each model keeps the machine record and settings of its own run under ``run``."""
    if not os.path.exists(path):
        return [], [], {}
    with open(path, encoding="utf-8") as handle:
        earlier = json.load(handle)
    if earlier.get("quick") != quick:
        raise SystemExit(
            f"--append: {path} holds a {'quick' if earlier.get('quick') else 'full'}-mode run; not mixing modes"
        )
    kept, remeasured = [], {}
    for case in earlier.get("models", []):
        case.setdefault("run", {"machine": earlier.get("machine"), "settings": earlier.get("settings")})
        if case["model"] not in models:
            kept.append(case)
        else:
            remeasured[case["model"]] = case
    return kept, [str(n) for n in earlier.get("notes", [])], remeasured


def _with_earlier_rows(case: dict[str, Any], earlier: dict[str, Any] | None) -> dict[str, Any]:
    """``case`` plus the rows of ``earlier`` (the same model in the results file) for (scheme, target) pairs this run
    did not measure, e.g. ``--models VGG16 --targets 0.75 0.3 --append`` keeps VGG16's 0.5 rows. Each row's ratios
    were measured side by side within its own run; a kept row says which run (``measured_in``)."""
    if earlier is None or earlier.get("input_size") != case["input_size"]:
        return case
    measured = {(r["scheme"], r["target"]) for r in case["results"]}
    when = (earlier.get("run") or {}).get("machine", {}).get("date")
    old = [
        {**r, "measured_in": r.get("measured_in", when)}
        for r in earlier.get("results", [])
        if (r["scheme"], r["target"]) not in measured
    ]
    if not old:
        return case
    order = {scheme: i for i, scheme in enumerate(SCHEMES)}
    rows = sorted([*case["results"], *old], key=lambda r: (order.get(r["scheme"], len(order)), -r["target"]))
    return {**case, "results": rows}


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
        parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
        parser.add_argument("--memory", action="store_true", help="measure peak memory in --quick mode too")
        parser.add_argument(
            "--layer-batches",
            nargs="+",
            type=int,
            default=None,
            help="batch sizes of the per-layer breakdown (quick: 1; full: 1 8)",
        )
        parser.add_argument(
            "--targets", nargs="+", type=float, default=None, help="MAC targets (quick: 0.5; full: 0.75 0.5 0.3)"
        )
        parser.add_argument(
            "--append",
            action="store_true",
            help="keep the other models of an existing results file of the same mode (run one model at a time), and "
            "the rows of the models measured again at targets this run does not measure",
        )

    args = _common.parse_args(__doc__.split("\n\n")[0], extra)
    _common.quiet_tensorflow()
    if args.quick:
        settings = {
            "size": 64,
            "targets": [0.5],
            "batches": [1, 8],
            "tflite": ["MobileNetV2", "ViT"],
            "memory": args.memory and not args.no_memory,
            "memory_batch": 8,
            "warmup": 2,
            "repeats": 7,
            "layer_targets": [0.5],
            "layer_batches": [1],
        }
    else:
        settings = {
            "size": 224,
            "targets": [0.75, 0.5, 0.3],
            "batches": [1, 8],
            "tflite": True,
            "memory": not args.no_memory,
            "memory_batch": 8,
            "warmup": 2,
            "repeats": 9,
            "layer_targets": [0.5],
            "layer_batches": [1, 8],
        }
    if args.layer_batches is not None:
        settings["layer_batches"] = sorted(set(args.layer_batches))
    if args.targets is not None:
        if not all(0 < t < 1 for t in args.targets):
            raise SystemExit("--targets: MAC targets must be between 0 and 1")
        settings["targets"] = sorted(set(args.targets), reverse=True)
    machine = _common.machine_info()
    if settings["memory"]:
        settings["memory_baseline_mb"] = peak_memory_mb("", "none", 1)["after_import_mb"]
    result = {
        "benchmark": "real_speed",
        "quick": args.quick,
        "settings": settings,
        "machine": machine,
        "models": [],
        "complete": False,
    }
    kept: list[dict[str, Any]] = []
    remeasured: dict[str, dict[str, Any]] = {}
    if args.append:
        path = os.path.join(args.output_dir, "real_speed.json")
        kept, notes, remeasured = _earlier_models(path, args.quick, args.models)
        if notes:
            result["notes"] = notes
    measured: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            measured.append(_with_earlier_rows(run_model(name, args, settings, folder), remeasured.get(name)))
            result["complete"] = len(measured) == len(args.models)
            result["models"] = sorted([*kept, *measured], key=lambda m: MODELS.index(m["model"]))
            if kept:
                result["appended_to"] = [m["model"] for m in kept]
            # written after every model, so a long full run that is stopped keeps what it measured
            paths = _common.write_results(args.output_dir, "real_speed", result, markdown(result))
            gc.collect()
    print("wrote", *paths)


if __name__ == "__main__":
    main()
