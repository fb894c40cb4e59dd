"""Checks of a ``.keras`` (or ``.npz``) file before it is loaded: plain Python, no TensorFlow import.

A ``.keras`` model is a zip archive (``config.json``, ``metadata.json``, ``model.weights.h5``). Loading one
inflates its members; a crafted file of 2 MB can declare a 2 GiB weights file and take a minute and gigabytes
of memory before anything fails. :func:`check_keras_archive` reads only the archive's directory and refuses,
with one line, before any loading:

* a file that is not a zip archive (an HDF5 ``.h5`` model renamed, a text file) or is cut short (an
  interrupted copy or download), saying which;
* declared uncompressed sizes above a limit: :data:`DEFAULT_MAX_BYTES` (8 GiB) in all, unless the environment
  variable ``TFCOMPRESS_MAX_MODEL_BYTES`` sets another (``500M``, ``20G``, or a number of bytes);
* a member that expands more than :data:`MAX_EXPANSION` times its stored size to more than
  :data:`EXPANSION_FLOOR_BYTES` (Keras stores its members uncompressed, so only a crafted file does this);
  setting ``TFCOMPRESS_MAX_MODEL_BYTES`` explicitly trusts the file up to that size and lifts this rule.

Example:
    >>> import os, tempfile, zipfile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> with zipfile.ZipFile(path, "w") as archive:
    ...     archive.writestr("config.json", "{}")
    >>> check_keras_archive(path)
    >>> _ = open(path, "wb").write(b"not a zip")
    >>> check_keras_archive(path)
    Traceback (most recent call last):
    ...
    tfcompress.archive.ArchiveError: cannot load '...m.keras': it is not a .keras model, not even a zip archive (9 bytes; a .keras file is a zip of config.json and model.weights.h5)
"""

from __future__ import annotations

import os
import re
import zipfile

__all__ = ["ArchiveError", "DEFAULT_MAX_BYTES", "check_keras_archive", "max_bytes_from_env", "parse_size"]

DEFAULT_MAX_BYTES = 8 << 30  # 8 GiB: far above the CNNs this toolkit compresses (ResNet50: 100 MB, VGG19: 550 MB)
MAX_EXPANSION = 100
EXPANSION_FLOOR_BYTES = 64 << 20
ENV_VAR = "TFCOMPRESS_MAX_MODEL_BYTES"

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class ArchiveError(ValueError):
    """A model or data archive that is refused before loading (one line that says why)."""


def parse_size(text: str) -> int:
    """``"500M"`` -> bytes (binary units K, M, G, T; a plain number is bytes).

    Example:
        >>> parse_size("8G"), parse_size("1024"), parse_size("1.5k")
        (8589934592, 1024, 1536)
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
    if match is None:
        raise ValueError(f"{ENV_VAR}={text!r} is not a size (use e.g. 500M, 20G or a number of bytes)")
    return int(float(match[1]) * _UNITS[match[2].lower()])


def max_bytes_from_env() -> int | None:
    """The limit set by ``TFCOMPRESS_MAX_MODEL_BYTES``, or ``None`` when it is not set."""
    value = os.environ.get(ENV_VAR, "").strip()
    return parse_size(value) if value else None


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def check_keras_archive(path: str | os.PathLike, max_bytes: int | None = None, what: str = ".keras model") -> None:
    """Refuse ``path`` (raise :class:`ArchiveError`) unless it is a whole zip archive within the size limits.

    ``max_bytes`` is the limit on the total declared uncompressed size (default: ``TFCOMPRESS_MAX_MODEL_BYTES``, or
    :data:`DEFAULT_MAX_BYTES`); an explicit limit (argument or variable) also lifts the expansion rule.
    """
    path = os.fspath(path)
    explicit = max_bytes if max_bytes is not None else max_bytes_from_env()
    limit = DEFAULT_MAX_BYTES if explicit is None else int(explicit)
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not zipfile.is_zipfile(path):
        if head.startswith(b"\x89HDF"):
            raise ArchiveError(
                f"cannot load {path!r}: it is not a {what} but an HDF5 file (the legacy .h5 format); load it with "
                "keras.models.load_model and save it again with model.save('model.keras')"
            )
        if head.startswith(b"PK"):
            raise ArchiveError(
                f"cannot load {path!r}: the {what} (a zip archive) is truncated or damaged ({size} bytes, no "
                "central directory at its end; was the copy or download interrupted?)"
            )
        raise ArchiveError(
            f"cannot load {path!r}: it is not a {what}, not even a zip archive ({size} bytes; a .keras file is a zip of config.json "
            "and model.weights.h5)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as err:
        raise ArchiveError(f"cannot load {path!r}: the {what} is a damaged zip archive ({err})") from None
    declared = sum(info.file_size for info in members)
    for info in members:
        if info.header_offset + info.compress_size > size:
            raise ArchiveError(
                f"cannot load {path!r}: the {what} (a zip archive) is truncated or damaged (member "
                f"{info.filename!r} ends past the end of the file)"
            )
        if (
            explicit is None
            and info.file_size > EXPANSION_FLOOR_BYTES
            and info.file_size > MAX_EXPANSION * max(info.compress_size, 1)
        ):
            raise ArchiveError(
                f"cannot load {path!r}: refused before loading: member {info.filename!r} would inflate from "
                f"{_size(info.compress_size)} to {_size(info.file_size)} (more than {MAX_EXPANSION}x; Keras stores "
                f"members uncompressed); set {ENV_VAR} (e.g. {ENV_VAR}=20G) to trust this file"
            )
    if declared > limit:
        raise ArchiveError(
            f"cannot load {path!r}: refused before loading: it would inflate to {_size(declared)}, above the limit of "
            f"{_size(limit)}; set {ENV_VAR} (e.g. {ENV_VAR}={max(1, -(-declared // (1 << 30)))}G) to allow it"
        )
