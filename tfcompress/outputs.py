"""Output paths that never lose work: checked before the long part, written as a whole, cleaned after a kill.

Plain Python (no TensorFlow import), used by the command line and by ``compress_model``'s score cache.

* :func:`check_writable_file` / :func:`check_writable_folder`: a path that cannot be written is found before
  the first evaluation (a probe file is created and removed), not after the whole run.
* :class:`RunOutputs`: the command line writes a run's outputs (model, stats, report) into a staging folder
  inside the output folder and moves them into place together at the end, so an interrupted run never leaves
  a new model beside an old run's stats. The moves are renames (microseconds) done under a marker file,
  ``tfcompress-incomplete.txt``, which only a kill in those microseconds can leave behind, and which then says
  that the folder mixes two runs.
* :func:`remove_stale_temp_files`: temporary files and staging folders that a killed process left (their
  names carry its PID; it is no longer running here) are removed by the next run.

Temporary names (see :mod:`tfcompress.atomic`): ``.NAME.tmp-PID-XXXXXXXX.tmp`` for text and JSON files,
``.NAME.tmp-PID.keras`` for models, ``.tfcompress-run-PID`` for staging folders.

Example:
    >>> import os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "out")
    >>> with RunOutputs(out, ["stats.json"]) as run:
    ...     with open(run.path("stats.json"), "w") as handle:
    ...         _ = handle.write("{}")
    ...     moved = run.commit()
    >>> sorted(os.listdir(out)), moved["stats.json"] == os.path.join(out, "stats.json")
    (['stats.json'], True)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "NotWritableError",
    "RunOutputs",
    "check_folder_can_be_written",
    "check_writable_file",
    "check_writable_folder",
    "pid_running",
    "remove_stale_temp_files",
    "INCOMPLETE_MARKER",
]

INCOMPLETE_MARKER = "tfcompress-incomplete.txt"

#: a temporary file of a process that is gone is removed once it is this old (a file on a shared folder may
#: belong to a live process of another machine with the same PID: such a file is being written, so it is young)
STALE_AFTER_SECONDS = 60.0
#: temporary files of older versions carry no PID: removed when this old
LEGACY_STALE_AFTER_SECONDS = 3600.0

_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(?:-[A-Za-z0-9_]+)?\.(?:tmp|keras)$")
_LEGACY_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp names of older versions
_STAGING = re.compile(r"^\.tfcompress-run-(?P<pid>\d+)$")


class NotWritableError(OSError):
    """An output path that cannot be written (reported before any work is done).

    Example:
        >>> str(NotWritableError("cannot write here"))
        'cannot write here'
    """


def pid_running(pid: int) -> bool:
    """Whether a process with this PID runs on this machine (this process counts).

    Example:
        >>> pid_running(os.getpid())
        True
    """
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else (EPERM), or cannot tell: leave its files alone
        return True
    return True


def check_writable_folder(folder: str | os.PathLike, what: str) -> None:
    """Raise :class:`NotWritableError` unless a file can be created in ``folder`` (a probe file, removed at once).

    ``os.access`` is not enough: it says yes to root on a read-only file system, and no file system says no
    to a probe that is never written.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise NotWritableError(f"{what}: the folder {folder!r} does not exist")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=f".tfcompress-probe.tmp-{os.getpid()}-", suffix=".tmp", dir=folder)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise NotWritableError(f"{what}: cannot write in the folder {folder!r} ({reason})") from None
    os.close(descriptor)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_folder_can_be_written(folder: str | os.PathLike, what: str) -> None:
    """Check that ``folder`` can be filled: a folder where a file can be created, or, when it does not exist yet,
    whose nearest existing parent is a folder where it can be created (nothing is created).

    Example:
        >>> import tempfile
        >>> check_folder_can_be_written(os.path.join(tempfile.mkdtemp(), "new", "out"), "-o")
    """
    folder = os.path.abspath(os.fspath(folder))
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise NotWritableError(f"{what} {folder!r} exists and is not a folder")
    existing = folder
    while not os.path.isdir(existing):
        parent = os.path.dirname(existing)
        if os.path.lexists(parent) and not os.path.isdir(parent):
            raise NotWritableError(f"{what} {folder!r}: {parent!r} is not a folder")
        existing = parent
    check_writable_folder(existing, f"{what} {folder!r}")


def check_writable_file(path: str | os.PathLike, what: str) -> str:
    """Check that ``path`` can be written as a whole file (atomically: a temporary file beside it, then a rename).

    Refuses an empty path, a folder, a path whose folder does not exist and one that cannot be written; returns
    the path.

    Example:
        >>> check_writable_file("", "--cache")
        Traceback (most recent call last):
        ...
        tfcompress.outputs.NotWritableError: --cache: the path is empty; give a file such as scores.json
    """
    path = os.fspath(path)
    if not path.strip():
        raise NotWritableError(f"{what}: the path is empty; give a file such as scores.json")
    if os.path.isdir(path):
        raise NotWritableError(
            f"{what} {path!r} is a folder; give a file in it, such as {os.path.join(path, 'scores.json')!r}"
        )
    if os.path.lexists(path) and not os.path.isfile(path):
        raise NotWritableError(f"{what} {path!r} exists and is not a regular file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise NotWritableError(f"{what} {path!r}: the folder {folder!r} does not exist; create it first")
    check_writable_folder(folder, f"{what} {path!r}")
    return path


def _age(path: str) -> float:
    try:
        return time.time() - os.lstat(path).st_mtime
    except OSError:
        return -1.0


def stale_temp_files(folder: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """The temporary files (and staging folders) in ``folder`` that a killed writer of ``names`` left behind.

    Only names of the forms above qualify, for a target in ``names``, whose PID does not run here and that were
    last written more than :data:`STALE_AFTER_SECONDS` ago (old-style names without a PID: more than
    :data:`LEGACY_STALE_AFTER_SECONDS` ago). Staging folders of a run qualify by their PID alone.
    """
    folder = os.fspath(folder)
    wanted = {*names, "tfcompress-probe"}  # (a writability probe of a run killed within its microseconds)
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    found = []
    for entry in entries:
        full = os.path.join(folder, entry)
        staging = _STAGING.match(entry)
        if staging is not None:
            if os.path.isdir(full) and not os.path.islink(full) and not pid_running(int(staging["pid"])):
                found.append(full)
            continue
        temp = _TEMP.match(entry)
        if temp is not None:
            if temp["name"] in wanted and not pid_running(int(temp["pid"])) and _age(full) > STALE_AFTER_SECONDS:
                found.append(full)
            continue
        legacy = _LEGACY_TEMP.match(entry)
        if legacy is not None and legacy["name"] in wanted and _age(full) > LEGACY_STALE_AFTER_SECONDS:
            found.append(full)
    return sorted(found)


def remove_stale_temp_files(folder: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """Remove :func:`stale_temp_files` (best effort: what cannot be removed stays); returns what was removed.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> stale = os.path.join(folder, ".stats.json.tmp-999999999-abcd1234.tmp")
        >>> open(stale, "w").close(); os.utime(stale, (0, 0))
        >>> [os.path.basename(p) for p in remove_stale_temp_files(folder, ["stats.json"])]
        ['.stats.json.tmp-999999999-abcd1234.tmp']
    """
    removed = []
    for path in stale_temp_files(folder, names):
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError:
            continue
        removed.append(path)
    return removed


def _fsync_folder(folder: str) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


class RunOutputs:
    """The output folder of one command-line run: checked and cleaned at the start, filled as a whole at the end.

    ``names`` are every file a run of this kind may write there; :meth:`commit` moves the staged ones into
    place and removes the others that an earlier run left (say ``report.html`` after a run with ``--no-report``),
    so the folder never mixes two runs. Use it as a context manager: leaving it without :meth:`commit` (an error,
    Ctrl-C) removes the staging folder, and the output folder if this run created it, and leaves an existing
    output folder as it was.
    """

    def __init__(self, folder: str | os.PathLike, names: Sequence[str], what: str = "-o") -> None:
        self.shown = os.fspath(folder)  # as the user wrote it, for the paths commit() returns
        self.folder = os.path.abspath(self.shown)
        self.names = list(names)
        self.what = what
        self.staging: str | None = None
        self.removed: list[str] = []
        self._created: list[str] = []  # folders this run created (innermost last)
        self._committed = False
        self._keep_staging = False

    # ---- start

    def __enter__(self) -> RunOutputs:
        self.prepare()
        return self

    def prepare(self) -> None:
        """Create the folder if needed, remove what killed runs left in it, and create the staging folder in it
        (which proves that the outputs can be written) before any work is done."""
        folder = self.folder
        if os.path.lexists(folder) and not os.path.isdir(folder):
            raise NotWritableError(f"{self.what} {folder!r} exists and is not a folder")
        self._make_folders(folder)
        self.removed += remove_stale_temp_files(folder, self.names)
        check_writable_folder(folder, f"{self.what} {folder!r}")
        self.staging = os.path.join(folder, f".tfcompress-run-{os.getpid()}")
        if os.path.isdir(self.staging):  # our own PID: a leftover of an earlier run in this very process
            shutil.rmtree(self.staging)
        os.mkdir(self.staging)

    def _make_folders(self, folder: str) -> None:
        missing = []
        while folder and not os.path.isdir(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except OSError as err:
                reason = err.strerror or type(err).__name__
                raise NotWritableError(f"{self.what} {self.folder!r}: cannot create {path!r} ({reason})") from None
            self._created.append(path)

    def path(self, name: str) -> str:
        """Where to write output ``name`` during the run (in the staging folder)."""
        if self.staging is None:
            raise RuntimeError("RunOutputs.path: call prepare() (or enter the block) first.")
        if name not in self.names:
            raise ValueError(f"RunOutputs.path: {name!r} is not one of {self.names}")
        return os.path.join(self.staging, name)

    # ---- end

    def commit(self) -> dict[str, str]:
        """Move the staged outputs into the output folder together; returns ``{name: final path}``."""
        if self.staging is None:
            raise RuntimeError("RunOutputs.commit: nothing was prepared.")
        staged = [n for n in self.names if os.path.isfile(os.path.join(self.staging, n))]
        final = {n: os.path.join(self.shown, n) for n in staged}
        marker = os.path.join(self.folder, INCOMPLETE_MARKER)
        with open(marker, "w", encoding="utf-8") as handle:
            handle.write(
                f"tfcompress (process {os.getpid()}) was replacing the outputs in this folder "
                f"({', '.join(self.names)}) with a new run's when it stopped: they may mix two runs. The new run's "
                f"files not moved yet are in {os.path.basename(self.staging)}/. Run again.\n"
            )
        try:
            for name in self.names:
                target = os.path.join(self.folder, name)
                if name in final:
                    os.replace(os.path.join(self.staging, name), target)
                elif os.path.isfile(target):
                    os.unlink(target)  # an output of an earlier run that this one does not write
        except BaseException:
            self._keep_staging = True  # what was not moved stays where the marker says
            raise
        os.unlink(marker)
        _fsync_folder(self.folder)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging = None
        self._committed = True
        return final

    def abort(self) -> None:
        """Remove the staging folder (unless a commit stopped half-way: it holds outputs then), and the folders this
        run created if they are empty."""
        if self.staging is not None and not self._keep_staging:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        for path in reversed(self._created):
            with contextlib.suppress(OSError):
                os.rmdir(path)

    def __exit__(self, *exc_info: Any) -> None:
        if not self._committed:
            self.abort()
