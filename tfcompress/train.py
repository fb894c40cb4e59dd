"""``FitTrainer``: a ready-made per-layer fine-tuning hook for ``compress_model(trainer=...)``."""

from __future__ import annotations

from typing import Any

import keras

from ._checks import is_int

__all__ = ["FitTrainer"]


class FitTrainer:
    """Fine-tunes the model with ``model.fit`` on your data for a few steps after each compressed layer.

    ``compress_model`` calls ``trainer.train_model(model, layer, train_flag=True)`` after
    compressing each layer (AIMET's hook). The model is compiled with ``optimizer``,
    ``loss`` and ``metrics`` when it is not compiled yet.

    Args:
        data: a ``tf.data.Dataset`` of ``(x, y)`` batches, or a tuple ``(x, y)`` of arrays.
        steps: optimisation steps per call.
        batch_size: batch size when ``data`` is arrays.
        optimizer, loss, metrics: used to compile an uncompiled model.
        verbose: passed to ``model.fit``.

    Example:
        >>> import numpy as np, keras, tfcompress as tfc
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> x, y = np.ones((8, 4), "float32"), np.zeros((8,), "int32")
        >>> trainer = tfc.FitTrainer((x, y), steps=2, loss="sparse_categorical_crossentropy")
        >>> trainer.train_model(model, model.layers[0])
        >>> trainer.calls
        1
    """

    def __init__(
        self,
        data: Any,
        steps: int = 100,
        batch_size: int = 32,
        optimizer: Any = "adam",
        loss: Any = None,
        metrics: Any = None,
        verbose: int = 0,
    ) -> None:
        if not is_int(steps) or steps < 1:
            raise ValueError(f"FitTrainer: steps must be an int >= 1, got {steps!r}.")
        steps = int(steps)
        if isinstance(data, tuple | list) and len(data) != 2:
            raise ValueError("FitTrainer: data must be a tf.data.Dataset of (x, y) or a pair (x, y) of arrays.")
        self.data = data
        self.steps = steps
        self.batch_size = int(batch_size)
        self.optimizer = optimizer
        self.loss = loss
        self.metrics = metrics
        self.verbose = verbose
        self.calls = 0

    def _dataset(self) -> Any:
        import tensorflow as tf

        if isinstance(self.data, tuple | list):
            x, y = self.data
            return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).batch(self.batch_size).repeat()
        return self.data.repeat()

    def train_model(self, model: keras.Model, layer: Any = None, train_flag: bool = True) -> None:
        """Run ``steps`` optimisation steps on ``model`` (nothing when ``train_flag`` is False)."""
        if not train_flag:
            return
        if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
            if self.loss is None:
                raise ValueError("FitTrainer: the model is not compiled; pass loss=... (and optimizer) to FitTrainer.")
            model.compile(optimizer=self.optimizer, loss=self.loss, metrics=self.metrics)
        model.fit(self._dataset(), steps_per_epoch=self.steps, epochs=1, verbose=self.verbose, shuffle=False)
        self.calls += 1
