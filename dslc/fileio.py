"""Every file dslc writes goes through here: to a temp file in the same directory, then rename, so
a crash, a kill or Ctrl-C leaves the old file or the new one, never half of one. Files that
cannot be recomputed (checkpoints, weights) are also fsynced, to survive a power loss; compiled
graphs skip that (a few ms each): a recompile restores them."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_write(path: str | Path, durable: bool = True) -> Iterator[IO[bytes]]:
    """`with atomic_write(p) as f: f.write(...)`: p appears whole when the block ends, or not at all;
    durable: fsync the file and the rename. A file system's refusal (no space, no permission, a
    folder in the way) is a DslError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "it is a folder", str(path))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise
    if not durable:
        return
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


_TEMP = re.compile(r"\.(.+)\.[A-Za-z0-9_]{8}\.tmp")  # what atomic_write's mkstemp names look like


def remove_stale_temps(folder: str | Path, owned: tuple[str, ...]) -> list[Path]:
    """Delete the temp files that a killed atomic_write left in `folder` for files ending in one of
    `owned` (e.g. ".npz"); a kill skips the clean-up, so without this they would stay for good.
    Only for a folder the caller alone writes (a run's --out): another writer's live temp would go."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.fullmatch(p.name)
        if m and m.group(1).endswith(owned) and p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    with atomic_write(path, durable) as f:
        f.write(data)


def save_npz(path: str | Path, arrays: dict[str, np.ndarray], compress: bool = False) -> None:
    """An .npz written by hand: np.savez(f, **arrays) breaks on an array named `file`."""
    with atomic_write(path) as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
            for name, value in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)


MAX_PROTO = 2**31 - 1  # protobuf cannot serialize a message of 2 GiB or more


def save_onnx(path: str | Path, model, durable: bool = True) -> None:
    from .diagnostics import DslError, format_bytes

    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size >= MAX_PROTO:
        raise DslError(f"cannot write {path}: its weights take {format_bytes(size)}, more than the 2 GiB "
                       f"one ONNX file can hold", hint="use smaller layers")
    try:
        data = model.SerializeToString()
    except MemoryError:
        raise DslError(f"out of memory writing {path}: the model needs about {format_bytes(2 * size)}") from None
    except ValueError as e:  # protobuf's own size limit, counted over the whole graph
        raise DslError(f"cannot write {path}: {e}") from None
    write_bytes(path, data, durable)


# ------------------------------------------------------------------ checking outputs before the work
def prepare_output_dir(folder: str | Path, what: str) -> Path:
    """Create `folder` (and its parents) for outputs, or say why it cannot be: checked before any
    work, so a bad path costs no compute."""
    from .diagnostics import DslError

    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            raise DslError(f"{what} {_shown(folder)} is a file, not a folder", hint="name a folder for the outputs")
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DslError(f"cannot create the folder {_shown(folder)} ({what}): {_reason(e)}") from None
    try:  # the real test (os.access says yes to root, and on read-only mounts like /proc)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise DslError(f"cannot write into {_shown(folder)} ({what}): {_reason(e)}") from None
    return folder


def check_output_file(path: str | Path, what: str) -> Path:
    """The same for one output file: its folder must be creatable and writable, and the path must
    not be a folder."""
    from .diagnostics import DslError

    path = Path(path)
    if path.is_dir():
        raise DslError(f"{what} {_shown(path)} is a folder", hint="name a file")
    if not path.name:
        raise DslError(f"{what} needs a file name")
    if path.parent.exists() and not path.parent.is_dir():
        raise DslError(f"cannot write {what} {_shown(path)}: {_shown(path.parent)} is a file, not a folder")
    prepare_output_dir(path.parent, what)
    return path


def _reason(e: OSError) -> str:
    if e.errno == errno.ENAMETOOLONG:
        return "the name is too long"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a part of the path is a file, not a folder"
    return (e.strerror or str(e)).lower()


def _write_error(path: Path, e: OSError):
    from .diagnostics import DslError

    return DslError(f"cannot write {_shown(path)}: {_reason(e)}")


# ------------------------------------------------------------------ reading
def check_regular(path: str | Path, what: str) -> Path:
    """`path` if it names a regular file; a DslError otherwise. A FIFO or a device would block or
    never end, a directory cannot be read: each is refused before it is opened."""
    from .diagnostics import DslError

    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        reason = "not found" if e.errno == errno.ENOENT else (e.strerror or str(e)).lower()
        raise DslError(f"cannot read {what} {_shown(path)}: {reason}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DslError(f"cannot read {what} {_shown(path)}: it is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise DslError(f"cannot read {what} {_shown(path)}: it is not a regular file "
                       f"(a {_kind(st.st_mode)})")
    return path


def read_regular(path: str | Path, what: str, limit: int | None = None) -> bytes:
    """The bytes of regular file `path`, with errors for people (see check_regular)."""
    from .diagnostics import DslError

    path = check_regular(path, what)
    try:
        # O_NONBLOCK: should the path turn into a FIFO after the check, open() must not hang.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise DslError(f"cannot read {what} {_shown(path)}: it is not a regular file")
            if limit is not None and st.st_size > limit:
                raise DslError(f"cannot read {what} {_shown(path)}: it holds {st.st_size:,} bytes, "
                               f"more than the {limit:,} a {what} may have")
            return f.read()
    except OSError as e:
        raise DslError(f"cannot read {what} {_shown(path)}: {(e.strerror or str(e)).lower()}") from None


def _shown(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 120 else text[:60] + "..." + text[-40:]  # a 5,000-char name helps nobody


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"
