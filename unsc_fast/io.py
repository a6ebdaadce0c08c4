"""Files that are either written whole or not at all, one at a time (:func:`atomic_save`) or
as a set (:class:`Outputs`: every output of a command appears at its end, or none does)."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

#: Temporary files of this package: ``.unsc_fast-<pid>-<name>.<random>.tmp`` beside their
#: target, so a later run can tell a stale one (its writer is gone) from a live one.
TEMP_PREFIX = ".unsc_fast-"
_TEMP_RE = re.compile(r"^\.unsc_fast-(\d+)-.*\.(tmp|bak)$")
STALE_AFTER_S = 600.0


def _temp_prefix(path: Path) -> str:
    return f"{TEMP_PREFIX}{os.getpid()}-{path.name}."


def atomic_save(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write through ``write(f)`` to a temporary file beside ``path``, then rename it over.

    A failure (or a kill) mid-write leaves no partial file behind (a kill leaves a temporary
    file that :func:`clean_stale` removes later).
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(f"directory {str(path.parent)!r} does not exist")
    tmp = _write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends, then deliver the first one.

    A rename set or its roll-back is cut short by a second Ctrl-C as surely as by the first:
    the user's old file would stay replaced, or a backup stranded. The blocks that must finish
    (commit, roll-back, clean-up) are short, so the signal waits for them. Only the main
    thread can set handlers; elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got:
            h = old[got[0]]
            if callable(h):
                h(got[0], None)           # e.g. default_int_handler: KeyboardInterrupt here
            elif h == signal.SIG_DFL:
                os.kill(os.getpid(), got[0])


def _write_temp(path: Path, write: Callable[[IO[bytes]], None]) -> str:
    """A complete temporary copy of ``path``'s new content beside it; its name."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise type(exc)(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the mode open() would have.
        os.chmod(tmp, _mode_of(path))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise type(exc)(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
        raise
    return tmp


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:            # exists, owned by someone else
        return True
    return True


def clean_stale(directory: str | os.PathLike, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove this package's temporary files in ``directory`` left by a killed writer.

    Only names of the package's pattern whose writer pid is no longer alive and that are
    older than ``older_than_s`` are removed; anything else is left alone. Returns them.
    """
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for e in entries:
        m = _TEMP_RE.match(e.name)
        is_dir = e.is_dir(follow_symlinks=False)
        if not m or not (is_dir or e.is_file(follow_symlinks=False)):
            continue
        try:
            if now - e.stat(follow_symlinks=False).st_mtime < older_than_s or \
                    _pid_alive(int(m.group(1))):
                continue
            if is_dir:
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            continue
    return removed


def check_writable_dir(directory: Path, for_path: Path) -> None:
    """Raise (naming ``for_path``) unless a file can be created in ``directory``."""
    try:
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(for_path), suffix=".tmp",
                                     dir=directory)
    except OSError as exc:
        raise PermissionError(f"cannot write {str(for_path)!r}: directory"
                              f" {str(directory)!r}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


class Outputs:
    """The outputs of one command as a transaction: all appear at the end, or none does.

    ``plan(path)`` every output before any work (its directory must exist and take a probe
    file; stale temporary files there are removed); ``stage(path, write)`` writes a complete
    temporary file beside it; ``commit()`` renames them all into place, restoring any file
    already replaced if a later rename fails. Leaving the ``with`` block by an exception (or
    calling :meth:`abort`) removes the staged files: no existing output is touched.
    """

    def __init__(self) -> None:
        self._planned: list[Path] = []
        self._dirs: list[tuple[Path, Path]] = []      # (directory to create, its top new one)
        self._staged: dict[Path, str] = {}
        self._created: list[Path] = []

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()

    @property
    def planned(self) -> list[Path]:
        return list(self._planned)

    def plan(self, path: str | os.PathLike, *, directory: bool = False) -> Path:
        """Check that ``path`` can be written (a file in an existing writable directory);
        with ``directory``, an output that is a whole directory (:meth:`stage_dir`)."""
        p = Path(path)
        if directory and p.exists() and not p.is_dir():
            raise NotADirectoryError(f"output {str(p)!r} exists and is not a directory")
        if not directory and p.is_dir():
            raise IsADirectoryError(f"output {str(p)!r} is a directory; give a file name")
        if p.parent.exists() and not p.parent.is_dir():
            raise NotADirectoryError(f"output {str(p)!r}: {str(p.parent)!r} is a file,"
                                     " not a directory")
        if not p.parent.is_dir():
            raise FileNotFoundError(f"output directory {str(p.parent)!r} does not exist")
        if any(_same(p, q) for q in self._planned):
            raise ValueError(f"two outputs are the same file {str(p)!r}; give them different"
                             " names")
        check_writable_dir(p.parent, p)
        clean_stale(p.parent)
        self._planned.append(p)
        return p

    def plan_dir(self, path: str | os.PathLike) -> Path:
        """An output directory: existing and writable, or creatable (created at staging)."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(f"output {str(p)!r} exists and is not a directory")
        anc = p
        while not anc.exists():
            anc = anc.parent
        if not anc.is_dir():
            raise NotADirectoryError(f"cannot create output directory {str(p)!r}:"
                                     f" {str(anc)!r} is not a directory")
        check_writable_dir(anc, p / "x")
        if p.exists():
            clean_stale(p)
        return p

    def stage(self, path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
        """Write ``path``'s new content to a temporary file beside it (not yet visible)."""
        p = Path(path)
        if not p.parent.exists():          # a planned output directory
            top = p.parent
            while not top.parent.exists():
                top = top.parent
            p.parent.mkdir(parents=True, exist_ok=True)
            self._created.append(top)
        if p in self._staged:
            raise ValueError(f"output {str(p)!r} staged twice")
        self._staged[p] = _write_temp(p, write)
        return p

    def stage_dir(self, path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
        """Like :meth:`stage` for an output that is a directory (e.g. a Hugging Face model):
        ``write(tmp_dir)`` fills a temporary directory beside ``path``; :meth:`commit` renames
        it into place (an old directory there is kept aside until the whole commit is done)."""
        p = Path(path)
        if p in self._staged:
            raise ValueError(f"output {str(p)!r} staged twice")
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(f"output {str(p)!r} exists and is not a directory")
        try:
            tmp = tempfile.mkdtemp(prefix=_temp_prefix(p), suffix=".tmp", dir=p.parent)
        except OSError as exc:
            raise type(exc)(f"cannot write {str(p)!r}: {exc.strerror or exc}") from None
        self._staged[p] = tmp
        try:
            write(Path(tmp))
        except BaseException as exc:
            self._staged.pop(p)
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise type(exc)(f"cannot write {str(p)!r}: {exc.strerror or exc}") from None
            raise
        return p

    def commit(self) -> list[Path]:
        """Rename every staged file into place; all or nothing. Returns the paths.

        SIGINT and SIGTERM wait until the renames (or their roll-back) are done: an interrupt
        during commit is raised after it, with every output in place.
        """
        with signals_deferred():
            return self._commit()

    def _commit(self) -> list[Path]:
        done: list[tuple[Path, str | None]] = []       # (target, backup of its old content)
        try:
            for p, tmp in self._staged.items():
                backup = None
                if p.exists():
                    backup = _backup(p)
                done.append((p, backup))
                os.replace(tmp, p)
        except BaseException:
            for p, backup in reversed(done):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        if p.is_dir() and not p.is_symlink():
                            shutil.rmtree(p)
                        os.replace(backup, p)
                    elif p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        os.unlink(p)
            raise
        else:
            for _, backup in done:
                if backup is not None:
                    with contextlib.suppress(OSError):
                        _remove(backup)
            paths = list(self._staged)
            self._staged.clear()
            self._created.clear()
            return paths
        finally:
            self._abort()

    def abort(self) -> None:
        """Remove every staged temporary file (and directories staging created); a second
        Ctrl-C waits until that is done."""
        with signals_deferred():
            self._abort()

    def _abort(self) -> None:
        for tmp in self._staged.values():
            with contextlib.suppress(OSError):
                _remove(tmp)
        self._staged.clear()
        for top in reversed(self._created):
            with contextlib.suppress(OSError):
                _rmdir_empty(top)
        self._created.clear()


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _backup(p: Path) -> str:
    """A hard link (else a copy) of ``p``'s current content beside it; its name. A directory
    is moved aside instead (renamed back if the commit fails)."""
    name = tempfile.mktemp(prefix=_temp_prefix(p), suffix=".bak", dir=p.parent)
    if p.is_dir() and not p.is_symlink():
        os.replace(p, name)
        return name
    try:
        os.link(p, name)
    except OSError:
        shutil.copy2(p, name)
    return name


def _rmdir_empty(top: Path) -> None:
    for d in sorted((q for q in top.rglob("*") if q.is_dir()), key=lambda q: -len(q.parts)):
        d.rmdir()
    top.rmdir()


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


def _mode_of(path: Path) -> int:
    """The mode of the file being replaced, else 0666 less the process umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask
