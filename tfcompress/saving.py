"""Reading ``.keras`` files: which tfcompress classes a file names, and a short, useful load error.

Keras finds a custom layer only once its class is registered, which ``import tfcompress`` does.
Its own error for a missing class is several kilobytes long (it prints the whole layer config)
and never names the package; :func:`load_error_message` says what to do instead.
"""

from __future__ import annotations

import json
import sys
import zipfile
from typing import Any

from ._version import __version__

__all__ = ["load_error_message", "registered_names"]

PACKAGE = "tfcompress"


def registered_names(path: str) -> list[str]:
    """The ``registered_name`` values (e.g. ``"tfcompress>SVDDense"``) in a ``.keras`` file's config, sorted.

    Returns an empty list for a file that is not a readable ``.keras`` archive.

    Example:
        >>> import keras, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
        >>> keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
        >>> registered_names(path)
        []
    """
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            name = node.get("registered_name")
            if isinstance(name, str) and ">" in name:
                found.add(name)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return sorted(found)


def load_error_message(error: BaseException, path: str) -> str:
    """One line for an error ``keras.models.load_model(path)`` raised, naming tfcompress when its classes are missing.

    Keras's "Full object config: ..." tail is dropped. When the file names ``tfcompress>`` classes
    that are not registered, the message says to ``import tfcompress`` first (or, when it is imported,
    that this version does not define them).

    Example:
        >>> load_error_message(ValueError("File not found: x.keras"), "x.keras")
        'File not found: x.keras'
    """
    message = " ".join(str(error).split()) or type(error).__name__
    message = message.split(" Full object config:")[0]
    ours = [name for name in registered_names(path) if name.split(">")[0] == PACKAGE]
    if not ours or "keras" not in sys.modules:
        return message
    import keras

    unknown = [name for name in ours if keras.saving.get_registered_object(name) is None]
    if not unknown:
        return message
    classes = ", ".join(name.split(">", 1)[1] for name in unknown)
    if "tfcompress.layers" not in sys.modules:
        return (
            f"the model uses tfcompress layers ({classes}) that are not registered with Keras: "
            "import tfcompress first, then keras.models.load_model"
        )
    return (
        f"the model uses tfcompress layers ({classes}) that tfcompress {__version__} does not define "
        "(saved by another version?): import tfcompress first, and install the version that wrote the file"
    )
