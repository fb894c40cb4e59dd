"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (gzipped IDX files, read with numpy).

    apt-get install -y dataset-fashion-mnist      # 70,000 28x28 images under /usr/share/datasets/fashion-mnist/

``load_fashion_mnist()`` returns ``(x_train, y_train, x_test, y_test)``: images as float32 in [0, 1] with shape
``(n, 28, 28, 1)``, labels as int64 in 0..9 (60,000 training and 10,000 test images). ``read_idx(path)`` parses
one IDX file (gzipped or not) of any dimension.
"""

from __future__ import annotations

import gzip
import os
from typing import Any

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "apt-get install -y dataset-fashion-mnist"
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# IDX type codes (third byte of the magic number) -> numpy dtype (multi-byte types are big-endian)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, name: str = "IDX data") -> Any:
    """Parse the bytes of an IDX file: magic ``0x00 0x00 TYPE NDIM``, NDIM big-endian uint32 sizes, the values.

    Example:
        >>> parse_idx(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])).tolist()
        [[1, 2, 3], [4, 5, 6]]
    """
    import numpy as np

    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{name} is not an IDX file: it does not start with the magic bytes 0x00 0x00.")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_TYPES:
        raise ValueError(f"{name}: unknown IDX value type 0x{type_code:02x} (expected one of 08 09 0B 0C 0D 0E).")
    if ndim == 0:
        raise ValueError(f"{name}: an IDX file needs at least one dimension, the header says 0.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header ({len(data)} bytes for {ndim} dimensions).")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{name}: the IDX header promises shape {shape} of {dtype.name} ({expected} bytes with the header), "
            f"but the file holds {len(data)} bytes."
        )
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> Any:
    """Read one IDX file, gzipped (``.gz``) or plain, into a numpy array of its stored shape and type."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except gzip.BadGzipFile as err:
        raise ValueError(f"{path} is not a valid gzip file ({err}); reinstall with `{INSTALL_HINT}`.") from None
    return parse_idx(data, name=path)


def load_fashion_mnist(folder: str | os.PathLike = DEFAULT_DIR) -> tuple[Any, Any, Any, Any]:
    """``(x_train, y_train, x_test, y_test)``: float32 images in [0, 1], shape (n, 28, 28, 1), int64 labels.

    Raises:
        FileNotFoundError: when the files are missing, naming the Debian package that provides them.
        ValueError: when a file is not a valid IDX file, or images and labels do not match.
    """
    import numpy as np

    folder = os.fspath(folder)
    paths = {key: os.path.join(folder, name) for key, name in FILES.items()}
    missing = [path for path in paths.values() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST is not installed: missing {', '.join(missing)}. Install the Debian package with "
            f"`{INSTALL_HINT}` (as root), which puts the gzipped IDX files under {DEFAULT_DIR}/."
        )
    arrays = {key: read_idx(path) for key, path in paths.items()}
    out = []
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"Fashion-MNIST {split} split: expected images (n, 28, 28) and labels (n,), got "
                f"{images.shape} and {labels.shape}; reinstall with `{INSTALL_HINT}`."
            )
        out += [(images.astype(np.float32) / 255.0)[..., None], labels.astype(np.int64)]
    return out[0], out[1], out[2], out[3]


def available(folder: str | os.PathLike = DEFAULT_DIR) -> bool:
    """Whether all four files are present."""
    return all(os.path.isfile(os.path.join(os.fspath(folder), name)) for name in FILES.values())
