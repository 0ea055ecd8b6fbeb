"""Where a run keeps its working files, and how it leaves none behind, even after ``kill -9``.

A scan holds float32 copies of every image (patient data) in a scratch folder, and builds its
results in a staging folder beside ``--out``. Each such folder's name carries the owner, process
id and host (``replicheck-4242@node1-...``), so that the next run on the same host can remove
what a killed run left (:func:`sweep`): a folder whose process is gone is stale. A process that
is alive (or a folder of another host, or one we cannot inspect) is never touched.

:func:`publish` swaps a staged results folder in with one ``renameat2(RENAME_EXCHANGE)`` where
Linux offers it, so a reader sees the whole old set or the whole new one, never a mix; elsewhere
it falls back to two renames, where a kill between them leaves no results folder (never a mixed
one) and the next run removes the old set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from .records import OptionError

_HOST = re.sub(r"[^A-Za-z0-9.]", "", socket.gethostname())[:40] or "host"
_OWNED = re.compile(r"(\d+)@([A-Za-z0-9.]+)-")


@lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0o077)  # reading the umask means setting it; put back at once
    os.umask(mask)
    return mask


def published_mode(*, folder: bool = False) -> int:
    """The mode an output gets once in place: what the user's umask gives a new file or folder.
    Temporary names are created private (0600/0700) and opened up only as they are published;
    scratch folders holding image copies stay private."""
    return (0o777 if folder else 0o666) & ~_umask()


def owner_tag() -> str:
    """``PID@HOST``: which process made a working file, and where."""
    return f"{os.getpid()}@{_HOST}"


def is_stale(name: str) -> bool:
    """Whether the folder or file ``name`` was made by a process of this host that no longer runs."""
    found = _OWNED.search(name)
    if not found or found.group(2) != _HOST:
        return False
    pid = int(found.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, but another user's
        return False
    return False


def sweep(folder: str | Path, prefix: str) -> int:
    """Remove the entries of ``folder`` starting with ``prefix`` that dead processes of this host
    left; returns how many. Errors are ignored: a sweep never stops a run."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(prefix) or not is_stale(entry.name[len(prefix):]):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
        except OSError:
            pass
    return removed


SCRATCH_PREFIX = "replicheck-"


def scratch_prefix(kind: str = "") -> str:
    """The name prefix of a scratch folder for ``kind`` of work (``replicheck-masks-PID@HOST-``)."""
    return f"{SCRATCH_PREFIX}{kind}-{owner_tag()}-" if kind else f"{SCRATCH_PREFIX}{owner_tag()}-"


@contextmanager
def scratch(kind: str = ""):
    """A private folder under the system's temporary folder (``$TMPDIR``), removed on every exit
    path; first removes the scratch folders that killed runs of this host left there."""
    root = tempfile.gettempdir()
    sweep(root, SCRATCH_PREFIX)
    with tempfile.TemporaryDirectory(prefix=scratch_prefix(kind), dir=root) as folder:
        yield Path(folder)


def check_replaceable(out: str | Path, ours, *, what: str) -> None:
    """Before any work: ``out`` is new, empty, or holds only entries whose names ``ours(name)``
    accepts, since publishing ``what`` (a results folder, a part) replaces the folder as a whole."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OptionError("out", f"{out} is an existing file, not a folder")
    if not out.is_dir():
        return
    foreign = sorted(entry.name for entry in out.iterdir() if not ours(entry.name))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OptionError("out", f"{out} holds files that {what} does not write ({shown}); it is replaced as a "
                                 f"whole, so choose a new or empty folder")


def staging_prefix(target: Path) -> str:
    """The name prefix of the staging folders (and swapped-out old sets) of results folder ``target``."""
    return f".{target.name}.staging-"


@contextmanager
def staged_folder(target: str | Path, *, private: bool = False):
    """A fresh folder beside ``target`` to build a whole result set in; on success,
    :func:`publish` swaps it in for ``target`` (opened up to the umask's mode, or kept to the
    owner alone when ``private``); on failure it is removed and ``target`` is untouched. Staging
    folders of killed runs beside ``target`` are removed first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep(target.parent, staging_prefix(target))
    staging = Path(tempfile.mkdtemp(prefix=f"{staging_prefix(target)}{owner_tag()}-", dir=target.parent))
    try:
        yield staging
        if not private:
            os.chmod(staging, published_mode(folder=True))
        publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after publish: the old set; after a failure: the new one


def publish(staging: Path, target: Path) -> None:
    """Put folder ``staging`` in the place of ``target``; the old ``target`` (if any) ends up at
    ``staging``'s path, for the caller to remove."""
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        return
    aside = Path(tempfile.mkdtemp(prefix=f"{staging_prefix(target)}{owner_tag()}-old-", dir=target.parent))
    os.rmdir(aside)
    os.rename(target, aside)  # a kill here leaves no target (never a mixed one); the next run removes aside
    os.rename(staging, target)
    os.rename(aside, staging)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # not supported by this system or file system
        return False
    raise OSError(code, os.strerror(code), str(second))
