"""Writing output files atomically: temporary files beside their destinations, renamed into place.

Every output prunec writes goes through here. A temporary file ``.prunec-*.tmp`` is created in the
destination's folder (so the final ``os.replace`` is a rename on one file system), given the usual
permissions (``0o666 & ~umask``; ``mkstemp`` makes 0600 files), written, flushed and fsynced, then
renamed over the destination. Several files are staged together and renamed in the order they were
opened only after all of them are complete, so a failure or interruption (an ``OSError``, Ctrl-C, any
exception) before the renames leaves every destination as it was and removes every temporary file.

* :func:`check_writable` fails early, before any work, when a path cannot be written.
* :class:`Staging` stages files (text or binary) and commits or discards them together; as a context
  manager it commits on success and discards on any exception.
* :func:`write_atomic` writes ``{path: text or bytes}``, all or none.

A temporary file that cannot be created (a missing or unwritable folder, a path that is a directory)
raises :class:`InvalidArgumentError` naming the path. An ``OSError`` while writing, syncing or renaming
(a full disk) also becomes :class:`InvalidArgumentError` naming the path, unless the caller asks to
get the ``OSError`` itself (``Staging(wrap_oserror=False)``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from types import TracebackType
from typing import IO, Any

from frontends.errors import InvalidArgumentError

__all__ = ["check_writable", "Staging", "write_atomic"]

_PREFIX, _SUFFIX = ".prunec-", ".tmp"


def _mkstemp_beside(path: str) -> tuple[int, str]:
    """A new temporary file in ``path``'s folder: ``(fd, name)``; InvalidArgumentError when it cannot be."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise InvalidArgumentError(f"{path}: is a directory; give a file name")
    if not os.path.isdir(directory):
        raise InvalidArgumentError(f"{path}: directory {directory} does not exist")
    try:
        return tempfile.mkstemp(prefix=_PREFIX, suffix=_SUFFIX, dir=directory)
    except OSError as exc:
        raise InvalidArgumentError(f"{path}: cannot write to {directory} ({exc.strerror or exc})") from None


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise :class:`InvalidArgumentError` unless ``path`` can be written as a new file (nothing is left behind)."""
    fd, tmp = _mkstemp_beside(os.fspath(path))
    os.close(fd)
    os.unlink(tmp)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


class Staging:
    """Temporary files beside their destinations, renamed into place together.

    ::

        with Staging() as s:
            s.open(data_path, "wb").write(blob)   # streamed as it comes
            s.open(model_path, "wb").write(model)
        # here both are in place, data_path renamed first; on any exception neither was touched

    The file objects belong to the staging: write to them, do not close them. :meth:`commit`
    flushes, fsyncs and closes every file, then renames them in the order they were opened;
    :meth:`discard` closes and removes every temporary file not yet renamed. A rename that fails
    part-way leaves the files already renamed in place (a rename cannot be undone) and removes the
    rest.
    """

    def __init__(self, wrap_oserror: bool = True) -> None:
        self.wrap_oserror = wrap_oserror
        self._files: list[tuple[IO[Any], str, str]] = []  # (file, temporary name, destination)
        self._current: str | None = None  # the destination being written, for error messages
        self._done = False

    def open(self, path: str | os.PathLike[str], mode: str = "w") -> IO[Any]:
        """A new temporary file for ``path``: ``mode`` ``"w"`` (UTF-8 text) or ``"wb"``."""
        if self._done:
            raise RuntimeError("this staging was already committed or discarded")
        if mode not in ("w", "wb"):
            raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
        path = os.fspath(path)
        fd, tmp = _mkstemp_beside(path)
        self._current = path
        try:
            os.chmod(tmp, 0o666 & ~_umask())
            f = os.fdopen(fd, mode, encoding="utf-8") if mode == "w" else os.fdopen(fd, mode)
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            os.unlink(tmp)
            raise
        self._files.append((f, tmp, path))
        return f

    def commit(self) -> None:
        """Flush, fsync and close every file, then rename each over its destination, in order."""
        if self._done:
            raise RuntimeError("this staging was already committed or discarded")
        try:
            for f, _, path in self._files:
                self._current = path
                f.flush()
                os.fsync(f.fileno())
                f.close()
            while self._files:
                _, tmp, path = self._files[0]
                self._current = path
                os.replace(tmp, path)
                self._files.pop(0)
        except BaseException:
            self.discard()
            raise
        self._done = True

    def discard(self) -> None:
        """Close and remove every temporary file not yet renamed; the destinations stay as they are."""
        self._done = True
        files, self._files = self._files, []
        for f, tmp, _ in files:
            try:
                f.close()
            except OSError:
                pass  # a failed flush of data that is thrown away anyway
            if os.path.exists(tmp):
                os.unlink(tmp)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.discard()
            if isinstance(exc, OSError) and self.wrap_oserror:
                raise self._wrapped(exc) from None
            return  # the exception goes on as it is
        if self._done:  # committed or discarded explicitly inside the block
            return
        try:
            self.commit()
        except OSError as err:
            if not self.wrap_oserror:
                raise
            raise self._wrapped(err) from None

    def _wrapped(self, exc: OSError) -> InvalidArgumentError:
        where = f"{self._current}: " if self._current else ""
        return InvalidArgumentError(f"{where}cannot write ({exc.strerror or exc})")


def write_atomic(files: Mapping[str, str | bytes], *, wrap_oserror: bool = True) -> None:
    """Write every ``path: text or bytes`` or none: all go to temporary files first, then each is renamed into place.

    Text is written as UTF-8. An ``OSError`` becomes :class:`InvalidArgumentError` naming the path
    unless ``wrap_oserror=False``.
    """
    with Staging(wrap_oserror=wrap_oserror) as s:
        for path, data in files.items():
            s.open(path, "wb" if isinstance(data, bytes) else "w").write(data)
