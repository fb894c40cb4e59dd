"""Accuracy vs compression on Fashion-MNIST: tfcompress's greedy selection against the recipes users would pick.

Two small CNNs (VGG-style, and ResNet-style with BatchNorm and residual ``Add``) are trained to a stable baseline
on real data (Debian package ``dataset-fashion-mnist``). For each MAC target, each method compresses the trained
model; test accuracy is measured before and after the same short fine-tuning. Methods: greedy spatial SVD, greedy
weight SVD, channel pruning, spatial SVD then channel pruning (the last two when this version of tfcompress has
them), one uniform ratio for every layer (plain per-layer weight SVD), and ranks chosen from the singular values
alone (data-free, no evaluation). The greedy searches score candidates by accuracy on a validation split held out
of the training set; the table reports accuracy on the separate test set.

    apt-get install -y dataset-fashion-mnist        # the data: /usr/share/datasets/fashion-mnist/*.gz
    python benchmarks/accuracy.py --quick           # small subsets, 1 epoch, target 0.5 (a minute or two)
    python benchmarks/accuracy.py                   # full: targets 0.75, 0.5, 0.3 (about 25 minutes)
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import _common
import fashion_mnist
import vit
from accuracy_methods import CLASSIFIER, METHODS, available_methods, methods_for
from accuracy_report import goals, markdown, plot, rewrite_outputs


def settings_for(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "train_images": 2000,
            "validation_images": 300,
            "test_images": 500,
            "baseline_epochs": 1,
            "baseline_batch_size": 64,
            "baseline_learning_rate": 2e-3,
            "finetune_images": 256,
            "finetune_batch_size": 64,
            "finetune_learning_rate": 1e-4,
            "targets": [0.5],
            "num_comp_ratio_candidates": 3,
            "tar_num_rank_indices": 50,
            "calibration_images": 100,
            "num_reconstruction_samples": 300,
            "svd_then_prune_ssvd_ratio": 0.85,
        }
    return {
        "train_images": 55000,
        "validation_images": 3000,
        "test_images": 10000,
        "baseline_epochs": 4,
        "baseline_batch_size": 128,
        "baseline_learning_rate": 2e-3,
        "finetune_images": 55000,  # one epoch over the whole training split
        "finetune_batch_size": 64,
        "finetune_learning_rate": 1e-4,
        "targets": [0.75, 0.5, 0.3],
        "num_comp_ratio_candidates": 10,
        "tar_num_rank_indices": 100,
        "calibration_images": 1000,
        "num_reconstruction_samples": 2000,
        "svd_then_prune_ssvd_ratio": 0.85,
    }


# ---------------------------------------------------------------- models


def vgg_cnn() -> Any:
    """VGG-style: three stages of two 3x3 convolutions (16, 32, 64 filters) and max pooling, then two Dense layers."""
    import keras

    layers = keras.layers
    x = inputs = keras.Input((28, 28, 1), name="image")
    index = 0
    for stage, filters in enumerate((16, 32, 64), start=1):
        for _ in range(2):
            index += 1
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{index}")(x)
        x = layers.MaxPooling2D(name=f"pool{stage}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    outputs = layers.Dense(10, name=CLASSIFIER)(x)
    return keras.Model(inputs, outputs, name="vgg_cnn")


def resnet_cnn() -> Any:
    """ResNet-style: a 3x3 stem (16 filters, 28x28), three stages of basic residual blocks (32, 64, 128 filters at
    14x14, 7x7, 4x4; 1, 2, 1 blocks; BatchNorm, ``Add``, 1x1 projection shortcut when the shape changes), global
    average pooling and the classifier."""
    import keras

    layers = keras.layers

    def conv_bn(x: Any, filters: int, strides: int, name: str, relu: bool = True) -> Any:
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=name)(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    def block(x: Any, filters: int, strides: int, name: str) -> Any:
        shortcut = x
        y = conv_bn(x, filters, strides, f"{name}_conv1")
        y = conv_bn(y, filters, 1, f"{name}_conv2", relu=False)
        if strides != 1 or x.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False, name=f"{name}_proj")(x)
            shortcut = layers.BatchNormalization(momentum=0.9, name=f"{name}_proj_bn")(shortcut)
        return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))

    x = inputs = keras.Input((28, 28, 1), name="image")
    x = conv_bn(x, 16, 1, "stem")
    for stage, (filters, strides, blocks) in enumerate(((32, 2, 1), (64, 2, 2), (128, 2, 1)), start=1):
        for b in range(blocks):
            x = block(x, filters, strides if b == 0 else 1, f"s{stage}b{b + 1}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(10, name=CLASSIFIER)(x)
    return keras.Model(inputs, outputs, name="resnet_cnn")


def vit_fashion() -> Any:
    """A small pre-norm ViT (``vit.py``): 4x4 patches of the 28x28 image (49 tokens), hidden size 64, 4 blocks of
    4-head self-attention and a 128-unit gelu feed-forward layer, learned position embedding, mean pooling."""
    return vit.vit(
        image_size=28, channels=1, patch_size=4, hidden_dim=64, num_layers=4, num_heads=4, mlp_dim=128,
        classifier=CLASSIFIER, name="vit",
    )  # fmt: skip


MODELS: dict[str, Callable[[], Any]] = {"vgg_cnn": vgg_cnn, "resnet_cnn": resnet_cnn, "vit": vit_fashion}

#: full-mode settings that differ per model (the shared data split stays: ``train_images`` and
#: ``validation_images`` take a prefix of it). The ViT trains about 6x slower per image than the CNNs on the 2
#: shared cores and its greedy searches score about 25 layers, so it trains on a 20,000-image subset, scores
#: candidates on 1,000 validation images and fine-tunes on 10,000 images.
MODEL_SETTINGS: dict[str, dict[str, Any]] = {
    "vit": {
        "train_images": 20000,
        "validation_images": 1000,
        "baseline_epochs": 6,
        "finetune_images": 10000,
        "calibration_images": 500,
        "num_reconstruction_samples": 1000,
    },
}


def model_settings(name: str, settings: dict[str, Any], quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(settings for this model, the overrides applied)``: quick mode never overrides (it is small already)."""
    overrides = {} if quick else MODEL_SETTINGS.get(name, {})
    merged = {**settings, **{k: v for k, v in overrides.items() if k not in ("train_images", "validation_images")}}
    for key in ("train_images", "validation_images"):  # a prefix of the shared split, never more
        merged[key] = min(overrides.get(key, settings[key]), settings[key])
    return merged, {k: merged[k] for k in overrides}


def model_data(data: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The shared split cut to this model's ``train_images`` / ``validation_images`` (prefixes of a random order)."""
    n, v = settings["train_images"], settings["validation_images"]
    return {
        **data,
        "x_train": data["x_train"][:n],
        "y_train": data["y_train"][:n],
        "x_val": data["x_val"][:v],
        "y_val": data["y_val"][:v],
    }


def compile_model(model: Any, learning_rate: Any) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def accuracy(model: Any, x: Any, y: Any) -> float:
    import numpy as np

    return float(np.mean(model.predict(x, batch_size=500, verbose=0).argmax(axis=1) == y))


# ---------------------------------------------------------------- data


def load_data(settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train / validation (held out of the 60,000 training images) / test, subsampled as the settings say."""
    import numpy as np

    x_train, y_train, x_test, y_test = fashion_mnist.load_fashion_mnist()
    order = np.random.default_rng(seed).permutation(len(x_train))
    n_val, n_train = settings["validation_images"], settings["train_images"]
    val, train = order[:n_val], order[n_val : n_val + n_train]
    test = np.arange(min(settings["test_images"], len(x_test)))
    return {
        "x_train": x_train[train],
        "y_train": y_train[train],
        "x_val": x_train[val],
        "y_val": y_train[val],
        "x_test": x_test[test],
        "y_test": y_test[test],
    }


# ---------------------------------------------------------------- baseline


def _baseline_key(name: str, model: Any, settings: dict[str, Any], seed: int) -> str:
    import keras

    described = {
        "config": model.get_config(),
        "keras": keras.__version__,
        "seed": seed,
        **{k: settings[k] for k in settings if k.startswith("baseline_") or k in ("train_images", "validation_images")},
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def baseline(
    name: str, data: dict[str, Any], settings: dict[str, Any], seed: int, cache_dir: str | None, reuse: bool = True
) -> tuple[Any, dict[str, Any]]:
    """Train the model (fixed seeds; cosine-decayed Adam), or load weights cached by an earlier full run.

    With ``cache_dir``, the trained weights are saved there (if under 2 MB) under a name that hashes the
    architecture, seed and training settings, and reused by the next run when ``reuse``."""
    import keras

    keras.utils.set_random_seed(seed)
    model = MODELS[name]()
    epochs, batch = settings["baseline_epochs"], settings["baseline_batch_size"]
    steps = epochs * -(-len(data["x_train"]) // batch)
    schedule = keras.optimizers.schedules.CosineDecay(settings["baseline_learning_rate"], steps, alpha=0.02)
    compile_model(model, schedule)
    info: dict[str, Any] = {}
    cache = None
    if cache_dir is not None:
        cache = os.path.join(
            cache_dir, f"accuracy_baseline_{name}_{_baseline_key(name, model, settings, seed)}.weights.h5"
        )
    if cache is not None and reuse and os.path.exists(cache):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the file has no optimizer state (the optimizer is not built yet)
            model.load_weights(cache)
        info.update(source="cached weights", cache_file=os.path.basename(cache))
    else:
        start = time.perf_counter()
        history = model.fit(
            data["x_train"],
            data["y_train"],
            batch_size=batch,
            epochs=epochs,
            validation_data=(data["x_val"], data["y_val"]),
            verbose=0,
        )
        info.update(
            source="trained in this run",
            train_seconds=time.perf_counter() - start,
            val_accuracy_per_epoch=[float(v) for v in history.history["val_accuracy"]],
            train_accuracy_per_epoch=[float(v) for v in history.history["accuracy"]],
        )
        if cache is not None:
            _save_small_weights(model, cache, name)
            info["cache_file"] = os.path.basename(cache) if os.path.exists(cache) else None
    return model, info


def _save_small_weights(model: Any, path: str, name: str, limit_bytes: int = 2_000_000) -> None:
    """Cache the weights next to the results if the file is small (< 2 MB); drop older caches of this model."""
    import glob

    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(suffix=".weights.h5", dir=folder)
    os.close(fd)
    try:
        bare = MODELS[name]()  # not compiled: the file holds the weights only, not the optimizer's state
        bare.set_weights(model.get_weights())
        bare.save_weights(temp, overwrite=True)
        if os.path.getsize(temp) >= limit_bytes:
            return
        for old in glob.glob(os.path.join(folder, f"accuracy_baseline_{name}_*.weights.h5")):
            os.remove(old)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


# ---------------------------------------------------------------- the run


def fine_tune(model: Any, data: dict[str, Any], settings: dict[str, Any], seed: int) -> float:
    """The same short fine-tuning for every method (and for the baseline, as a reference): one pass over a fixed
    subset (in full mode the whole training split), Adam with a low rate decayed to zero (cosine), fixed seed."""
    import keras

    keras.utils.set_random_seed(seed + 1)
    n, batch = settings["finetune_images"], settings["finetune_batch_size"]
    steps = -(-min(n, len(data["x_train"])) // batch)
    compile_model(model, keras.optimizers.schedules.CosineDecay(settings["finetune_learning_rate"], steps, alpha=0.0))
    start = time.perf_counter()
    model.fit(
        data["x_train"][:n],
        data["y_train"][:n],
        batch_size=batch,
        epochs=1,
        shuffle=True,
        verbose=0,
    )
    return time.perf_counter() - start


def _finetuned_baseline(model: Any, data: dict[str, Any], settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """The baseline after the fine-tuning every compressed model gets (on a copy): the fair reference for "after FT",
    since part of what fine-tuning recovers may be training the baseline itself had not finished."""
    import tfcompress as tfc

    copy = tfc.rewrite_model(model, {})  # a copy with the same weights
    seconds = fine_tune(copy, data, settings, seed)
    result = {
        "test_accuracy_after_ft": accuracy(copy, data["x_test"], data["y_test"]),
        "finetune_seconds": seconds,
    }
    del copy
    gc.collect()
    return result


def run_model(
    name: str,
    data: dict[str, Any],
    settings: dict[str, Any],
    seed: int,
    cache_dir: str | None,
    reuse: bool,
    scratch: str,
    methods: list[str] | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    import tfcompress as tfc

    settings, overrides = model_settings(name, settings, quick)
    data = model_data(data, settings)
    model, info = baseline(name, data, settings, seed, cache_dir, reuse)
    cost = tfc.model_cost(model, warn=False)  # the ViT's position embedding: an addition, 0 MACs (see vit.py)
    base_test = accuracy(model, data["x_test"], data["y_test"])
    base_val = accuracy(model, data["x_val"], data["y_val"])
    print(f"accuracy: {name}: baseline test accuracy {base_test:.4f} ({info['source']})", flush=True)
    info.update(_finetuned_baseline(model, data, settings, seed))
    print(f"  baseline after the same fine-tuning: {info['test_accuracy_after_ft']:.4f}", flush=True)

    def evaluate(m: Any, iterations: Any) -> float:
        return accuracy(m, data["x_val"], data["y_val"])

    ctx = {"settings": settings, "scratch": scratch, "x_calib": data["x_train"][: settings["calibration_images"]]}
    rows = []
    for target in settings["targets"]:
        functions = available_methods()
        for method in methods_for(name):
            function = functions[method]
            if methods is not None and method not in methods:
                continue
            row: dict[str, Any] = {"method": method, "label": METHODS[method], "target": target}
            if function is None:
                row["status"] = "not available"
                row["reason"] = "this version of tfcompress does not have it"
                rows.append(row)
                continue
            try:
                start = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    compressed, notes = function(model, evaluate, target, ctx)
                row["compress_seconds"] = time.perf_counter() - start
                messages = sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)})
                if messages:
                    row["warnings"] = messages
            except Exception as err:  # one failing method must not lose the others' results
                row.update(status="error", reason=f"{type(err).__name__}: {err}")
                rows.append(row)
                print(f"  {method} @ {target}: ERROR {row['reason']}", flush=True)
                continue
            after_cost = tfc.model_cost(compressed, warn=False)
            before = accuracy(compressed, data["x_test"], data["y_test"])
            row["finetune_seconds"] = fine_tune(compressed, data, settings, seed)
            after = accuracy(compressed, data["x_test"], data["y_test"])
            row.update(
                status="ok",
                mac_ratio=after_cost.macs / cost.macs,
                param_ratio=after_cost.params / cost.params,
                test_accuracy_before_ft=before,
                test_accuracy_after_ft=after,
                delta_before_ft=before - base_test,
                delta_after_ft=after - base_test,
                delta_after_ft_vs_finetuned_baseline=after - info["test_accuracy_after_ft"],
                **notes,
            )
            rows.append(row)
            print(
                f"  {method} @ {target}: MAC ratio {row['mac_ratio']:.3f}, test accuracy {before:.4f} -> "
                f"{after:.4f} after fine-tuning",
                flush=True,
            )
            del compressed
            gc.collect()
    out = {
        "model": name,
        "macs": cost.macs,
        "params": cost.params,
        "methods": methods_for(name),
        "baseline": {"test_accuracy": base_test, "val_accuracy": base_val, **info},
        "results": rows,
    }
    if overrides:
        out["settings_override"] = overrides
    if cost.uncounted:
        out["uncounted"] = dict(cost.uncounted)
    return out


def _earlier_result(output_dir: str, settings: dict[str, Any], quick: bool) -> dict[str, Any] | None:
    """The existing ``accuracy.json`` whose other methods' (``--methods``) or other models' (``--models``) rows
    this run keeps (same mode and settings), or None when there is none."""
    path = os.path.join(output_dir, "accuracy.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        earlier = json.load(handle)
    if earlier.get("quick") != quick or earlier.get("settings") != settings:
        raise SystemExit(
            f"accuracy.py --methods/--models: {path} was made with other settings or in the other mode; rerun every "
            "method and model (without --methods and --models) or use another --output-dir"
        )
    return earlier


def _merge_rows(case: dict[str, Any], earlier: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """``case`` (this run's rows of ``methods``) plus the earlier run's rows of the other methods, in method order."""
    old = next((m for m in earlier["models"] if m["model"] == case["model"]), None)
    if old is None:
        return case
    if abs(old["baseline"]["test_accuracy"] - case["baseline"]["test_accuracy"]) > 1e-9:
        raise SystemExit(
            f"accuracy.py --methods: the {case['model']} baseline differs from the earlier run's "
            f"({case['baseline']['test_accuracy']:.4f} vs {old['baseline']['test_accuracy']:.4f}); rerun every method"
        )
    order = list(METHODS)
    rows = [r for r in old["results"] if r["method"] not in methods] + case["results"]
    rows.sort(key=lambda r: (-r["target"], order.index(r["method"])))
    return {**case, "results": rows}


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
        parser.add_argument("--retrain", action="store_true", help="ignore baseline weights cached by a full run")
        parser.add_argument(
            "--from-json", action="store_true", help="only redraw accuracy.md and accuracy.png from accuracy.json"
        )
        parser.add_argument(
            "--methods",
            nargs="+",
            choices=list(METHODS),
            default=None,
            help="run only these methods; the other methods' rows are kept from the existing accuracy.json "
            "(same mode, settings and baseline), so one method can be re-measured after a change",
        )
        parser.add_argument(
            "--note",
            action="append",
            default=[],
            help="a sentence about this run for the results (why methods were re-measured, what ran beside it); "
            "repeatable; kept by later --methods runs",
        )

    args = _common.parse_args(__doc__.split("\n\n")[0], extra)
    if args.from_json:
        rewrite_outputs(args.output_dir)
        return
    try:
        available = fashion_mnist.available()
        if not available:
            fashion_mnist.load_fashion_mnist()  # raises the message naming the package
    except FileNotFoundError as err:
        raise SystemExit(f"accuracy.py: {err}") from None
    _common.quiet_tensorflow()
    machine = _common.machine_info()
    settings = settings_for(args.quick)
    start = time.perf_counter()
    data = load_data(settings, args.seed)
    cache_dir = None if args.quick else args.output_dir  # quick mode never caches
    # --methods keeps the other methods' rows, --models (a subset) the other models, from the existing results
    partial = bool(args.methods) or set(args.models) != set(MODELS)
    earlier = _earlier_result(args.output_dir, settings, args.quick) if partial else None
    models = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            case = run_model(
                name, data, settings, args.seed, cache_dir, not args.retrain, scratch, args.methods, args.quick
            )
            if earlier is not None and args.methods:
                case = _merge_rows(case, earlier, args.methods)
            models.append(case)
            gc.collect()
    if earlier is not None:
        models += [m for m in earlier["models"] if m["model"] not in args.models]
        order = list(MODELS)
        models.sort(key=lambda m: order.index(m["model"]) if m["model"] in order else len(order))
    result = {
        "benchmark": "accuracy",
        "quick": args.quick,
        "machine": machine,
        "settings": settings,
        "methods": METHODS,
        "models": models,
        "goals": goals(models),
        "seconds": time.perf_counter() - start,
    }
    notes = [*(earlier.get("notes", []) if earlier is not None else []), *args.note]
    if notes:
        result["notes"] = notes
    if earlier is not None and args.methods:
        result["rerun_methods"] = {
            "methods": args.methods,
            "models": args.models,
            "date": machine.get("date"),
            "other_rows_from": earlier["machine"].get("date"),
        }
    elif earlier is not None:  # a run of some models only: the others' rows and their re-run record are kept
        if "rerun_methods" in earlier:
            result["rerun_methods"] = earlier["rerun_methods"]
        result["rerun_models"] = {
            "models": args.models,
            "date": machine.get("date"),
            "other_models_from": earlier["machine"].get("date"),
            "other_models_seconds": earlier.get("seconds"),
        }
    os.makedirs(args.output_dir, exist_ok=True)
    png = os.path.join(args.output_dir, "accuracy.png")
    result["plot"] = None
    # the measured rows are written first: a plot that fails must not lose a run of many minutes
    paths = _common.write_results(args.output_dir, "accuracy", result, markdown(result))
    try:
        drawn = plot(result, png)
    except Exception as err:  # the results are on disk already: say why there is no plot
        print(f"accuracy.py: the plot failed ({type(err).__name__}: {err}); the results above are complete")
        drawn = False
    if drawn:
        result["plot"] = os.path.basename(png)
        paths = _common.write_results(args.output_dir, "accuracy", result, markdown(result))
    print("wrote", *paths, *([png] if drawn else []))


if __name__ == "__main__":
    main()
