"""Shared pytest setup and the small models several test files build: keep this file small."""

import os

# Quiet TensorFlow's C++ logging; must happen before TensorFlow is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cnn(widths=(8, 16, 16), softmax=False, seed=1, name="tiny"):
    """conv1 -> conv2 -> maxpool -> conv3 -> GAP -> fc on 8x8x1 inputs (the digits architecture).

    ``test_compress.py`` and ``test_accuracy_target.py`` import it (``from conftest import cnn``).
    """
    import keras  # here, not at the top: the TF_CPP_MIN_LOG_LEVEL above must come first

    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(widths[0], 3, padding="same", activation="relu", name="conv1"),
            L.Conv2D(widths[1], 3, padding="same", activation="relu", name="conv2"),
            L.MaxPooling2D(name="pool"),
            L.Conv2D(widths[2], 3, padding="same", activation="relu", name="conv3"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(10, activation="softmax" if softmax else None, name="fc"),
        ],
        name=name,
    )
