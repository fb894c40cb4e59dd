"""The demo: train a small CNN on real digits, compress it to half the MACs, fine-tune, save and export.

Runs offline on scikit-learn's bundled 8x8 digits (1,797 real images) in well
under two minutes on a 2-core CPU::

    python -m tfcompress demo --output tfcompress_demo_output
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DemoResult", "digits_data", "digits_cnn", "run_demo"]


def digits_data(seed: int = 0, test_fraction: float = 0.33) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(x_train, y_train, x_test, y_test)``: 8x8x1 float32 in [0, 1].

    Example:
        >>> x_train, y_train, x_test, y_test = digits_data()
        >>> x_train.shape[1:], len(x_train) + len(x_test)
        ((8, 8, 1), 1797)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the demo's data ships with scikit-learn, which is not installed: pip install scikit-learn matplotlib "
            '(or, in the tfcompress checkout: pip install -e ".[demo]")'
        ) from None

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = round(len(x) * (1 - test_fraction))
    return x[:split], y[:split], x[split:], y[split:]


def digits_cnn() -> Any:
    """The demo's small VGG-style CNN for 8x8x1 digits (about 56k parameters, 1.8M MACs).

    Example:
        >>> digits_cnn().count_params()
        56394
    """
    import keras

    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(10, activation="softmax", name="fc"),
        ],
        name="digits_cnn",
    )


def _latency_ms(model: Any, x: np.ndarray, repeats: int = 50) -> float:
    """Median latency of one compiled forward pass, after warm-up, in milliseconds."""
    import tensorflow as tf

    fn = tf.function(lambda inputs: model(inputs, training=False))
    batch = tf.constant(x)
    for _ in range(5):
        fn(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(batch).numpy()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


@dataclass
class DemoResult:
    """What the demo produced: accuracies, ratios, latencies and the files it wrote."""

    baseline_accuracy: float
    compressed_accuracy: float
    finetuned_accuracy: float
    mac_ratio: float
    param_ratio: float
    latency_ratio_batch1: float
    output_dir: str
    files: dict[str, str]
    stats: Any


def run_demo(
    output_dir: str = "tfcompress_demo_output",
    target: float = 0.5,
    epochs: int = 20,
    finetune_epochs: int = 3,
    seed: int = 0,
    verbose: int = 1,
) -> DemoResult:
    """Train, compress (spatial SVD, greedy auto mode), fine-tune, save, export, report; return the numbers.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     result = run_demo(folder, epochs=1, finetune_epochs=0, verbose=0)
        >>> abs(result.mac_ratio - 0.5) < 0.02
        True
    """
    import keras

    import tfcompress as tfc

    from .atomic import save_model_atomic, write_json_atomic
    from .outputs import check_folder_can_be_written

    check_folder_can_be_written(output_dir, "demo output folder")  # now, not after the training

    def say(text: str) -> None:
        if verbose:
            print(text, flush=True)

    keras.utils.set_random_seed(seed)
    x_train, y_train, x_test, y_test = digits_data(seed)
    say(f"[1/5] training a small CNN on scikit-learn's digits ({len(x_train)} train / {len(x_test)} test images)")
    model = digits_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)

    def accuracy(m: Any, iterations: Any = None) -> float:
        predictions = m.predict(x_test, batch_size=1024, verbose=0)
        return float(np.mean(np.argmax(predictions, axis=1) == y_test))

    say(
        f"[2/5] compressing with spatial SVD to {target:.2f} of the MACs (greedy per-layer selection; factors fitted "
        "to the training images' activations)"
    )
    params = tfc.SpatialSvdParameters(
        tfc.Mode.auto,
        tfc.SpatialSvdParameters.AutoModeParams(tfc.GreedySelectionParameters(target_comp_ratio=target)),
        data=x_train,  # data-aware factors: the training images are at hand, so use them
        num_reconstruction_samples=1000,
    )
    compressed, stats = tfc.compress_model(model, accuracy, None, "spatial_svd", "mac", params, verbose=verbose)

    say(f"[3/5] fine-tuning the compressed model for {finetune_epochs} epoch(s)")
    compressed.compile(
        optimizer=keras.optimizers.Adam(3e-4), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    if finetune_epochs:
        compressed.fit(x_train, y_train, epochs=finetune_epochs, batch_size=32, verbose=0)
    finetuned = accuracy(compressed)

    say("[4/5] measuring CPU latency (batch 1, median of 50 runs after warm-up)")
    lat_before = _latency_ms(model, x_test[:1])
    lat_after = _latency_ms(compressed, x_test[:1])

    say(f"[5/5] writing results to {output_dir}/")
    os.makedirs(output_dir, exist_ok=True)
    files = {
        "model": os.path.join(output_dir, "compressed.keras"),
        "saved_model": os.path.join(output_dir, "saved_model"),
        "stats": os.path.join(output_dir, "stats.json"),
        "summary": os.path.join(output_dir, "summary.json"),
    }
    stats.finetuned_model_accuracy = finetuned
    stats.finetune_note = f"after {finetune_epochs} epoch(s) of fine-tuning the whole compressed model"
    save_model_atomic(compressed, files["model"])
    compressed.export(files["saved_model"], verbose=False)
    stats.to_json(files["stats"])
    try:
        import matplotlib  # noqa: F401  (the report's plots need it)
    except ImportError:
        say('  (no report.html: the plots need matplotlib; from the checkout: pip install -e ".[report]")')
    else:
        from .report import report  # not tfc.report: under the command line (lazy package) that may be the module

        files["report"] = report(stats, os.path.join(output_dir, "report.html"))
    result = DemoResult(
        baseline_accuracy=stats.baseline_model_accuracy,
        compressed_accuracy=stats.compressed_model_accuracy,
        finetuned_accuracy=finetuned,
        mac_ratio=stats.mac_compression_ratio,
        param_ratio=stats.memory_compression_ratio,
        latency_ratio_batch1=lat_after / lat_before,
        output_dir=output_dir,
        files=files,
        stats=stats,
    )
    write_json_atomic(
        files["summary"],
        {
            "baseline_accuracy": result.baseline_accuracy,
            "compressed_accuracy": result.compressed_accuracy,
            "finetuned_accuracy": finetuned,
            "mac_ratio": result.mac_ratio,
            "param_ratio": result.param_ratio,
            "latency_ms_batch1": {"original": lat_before, "compressed": lat_after},
        },
    )
    if verbose:
        print()
        print(stats)
        print()
        print("                original    compressed")
        print(f"  MACs          {stats.original_macs:>9,d}    {stats.compressed_macs:>9,d}   (x{result.mac_ratio:.2f})")
        print(
            f"  params        {stats.original_params:>9,d}    {stats.compressed_params:>9,d}   (x{result.param_ratio:.2f})"
        )
        print(
            f"  accuracy      {result.baseline_accuracy:>9.4f}    {finetuned:>9.4f}   (after {finetune_epochs} fine-tuning epochs)"
        )
        print(f"  latency (b=1) {lat_before:>7.3f}ms    {lat_after:>7.3f}ms   (x{result.latency_ratio_batch1:.2f})")
        print()
        for what, path in files.items():
            note = "  (without the optimizer's state; import tfcompress before loading it)" if what == "model" else ""
            print(f"  wrote {what:<12} {path}{note}")
    return result
