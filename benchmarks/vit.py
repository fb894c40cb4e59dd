"""A plain Keras functional Vision Transformer for the benchmarks (``accuracy.py --models vit``, ``real_speed.py``).

keras_hub's ``ViTBackbone`` cannot be rewritten (keras_hub 0.32's ``ViTPatchingAndEmbedding`` does not re-create
from its own config), so the benchmarks build the same architecture from core Keras layers: a strided ``Conv2D``
cuts the image into patches and embeds them, ``PositionEmbedding`` (below) adds a learned position vector per
token (and prepends a learned class token when asked), then pre-norm encoder blocks

    x = x + MultiHeadAttention(LayerNorm(x))
    x = x + Dense(hidden)(Dense(mlp_dim, gelu)(LayerNorm(x)))

and a final LayerNorm, mean pooling over the tokens (or the class token) and a Dense classifier. Every projection
tfcompress can shrink is a core layer: the attention's query/key/value/output ``EinsumDense`` sublayers (weight SVD
to ``tfc.SVDEinsumDense``), the feed-forward ``Dense`` pair (weight SVD, or pruning of the hidden units).

>>> model = vit(image_size=28, channels=1, patch_size=4, hidden_dim=64, num_layers=4, num_heads=4, mlp_dim=128)
>>> model.output_shape, model.get_layer("block1_mlp1").units
((None, 10), 128)
"""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="tfcompress_benchmarks")
class PositionEmbedding(keras.layers.Embedding):
    """Adds a learned vector per token position to ``(batch, tokens, hidden)``; with ``class_token=True`` first
    prepends a learned class token (the output then has ``tokens + 1`` positions; the class token and its position
    vector are one row of the table, since they are only ever summed).

    An ``Embedding`` whose table is added instead of looked up: tfcompress counts it as one (0 MACs, its weights
    as parameters), which is what it costs. Build it with ``input_dim`` = the output's positions and
    ``output_dim`` = the hidden size.
    """

    def __init__(self, input_dim: int, output_dim: int, class_token: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("embeddings_initializer", keras.initializers.RandomNormal(stddev=0.02))
        super().__init__(input_dim, output_dim, **kwargs)
        self.class_token = bool(class_token)

    def build(self, input_shape: Any = None) -> None:
        super().build()

    def call(self, x: Any) -> Any:
        table = keras.ops.expand_dims(keras.ops.cast(self.embeddings, x.dtype), 0)
        if not self.class_token:
            return x + table
        cls = keras.ops.broadcast_to(table[:, :1], (keras.ops.shape(x)[0], 1, self.output_dim))
        return keras.ops.concatenate([cls, x + table[:, 1:]], axis=1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], self.input_dim, self.output_dim)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return None

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "class_token": self.class_token}


def vit(
    image_size: int = 28,
    channels: int = 1,
    patch_size: int = 4,
    hidden_dim: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    mlp_dim: int = 128,
    num_classes: int = 10,
    pool: str = "mean",
    classifier: str = "logits",
    name: str = "vit",
) -> keras.Model:
    """A pre-norm ViT as a functional model; layer names ``patch_embedding``, ``block{i}_attention`` (a
    ``MultiHeadAttention``), ``block{i}_mlp1`` (``Dense(mlp_dim, gelu)``), ``block{i}_mlp2`` and the classifier (named ``classifier``).

    ``pool`` is ``"mean"`` (mean over the patch tokens) or ``"class"`` (a learned class token, read at position 0):
    with ``image_size=224, patch_size=16, pool="class"`` the encoder runs on 197 tokens.
    """
    if image_size % patch_size:
        raise ValueError(f"vit: image_size={image_size} is not a multiple of patch_size={patch_size}")
    if hidden_dim % num_heads:
        raise ValueError(f"vit: hidden_dim={hidden_dim} is not a multiple of num_heads={num_heads}")
    if pool not in ("mean", "class"):
        raise ValueError(f"vit: pool must be 'mean' or 'class', got {pool!r}")
    layers = keras.layers
    grid = image_size // patch_size
    x = inputs = keras.Input((image_size, image_size, channels), name="image")
    x = layers.Conv2D(hidden_dim, patch_size, strides=patch_size, name="patch_embedding")(x)
    x = layers.Reshape((grid * grid, hidden_dim), name="tokens")(x)
    tokens = grid * grid + (pool == "class")
    x = PositionEmbedding(tokens, hidden_dim, class_token=pool == "class", name="position_embedding")(x)
    for i in range(1, num_layers + 1):
        y = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm1")(x)
        y = layers.MultiHeadAttention(num_heads, hidden_dim // num_heads, name=f"block{i}_attention")(y, y)
        x = layers.Add(name=f"block{i}_add1")([x, y])
        y = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm2")(x)
        y = layers.Dense(mlp_dim, activation="gelu", name=f"block{i}_mlp1")(y)
        y = layers.Dense(hidden_dim, name=f"block{i}_mlp2")(y)
        x = layers.Add(name=f"block{i}_add2")([x, y])
    x = layers.LayerNormalization(epsilon=1e-6, name="final_norm")(x)
    if pool == "mean":
        x = layers.GlobalAveragePooling1D(name="pool")(x)
    else:
        x = x[:, 0]  # the class token (an operation node, not a layer)
    outputs = layers.Dense(num_classes, name=classifier)(x)
    return keras.Model(inputs, outputs, name=name)
