"""The built LALR parser, kept between runs in a per-user folder that only its owner can write.

lark's own `cache=True` unpickles `$TMPDIR/.lark_cache_<user>_<hash>_<py>.tmp`: a predictable name
in a world-writable folder, so another local user could plant a pickle there and run code in the
next `dslc`. Here the cache lives in `$XDG_CACHE_HOME/dslc` (default `~/.cache/dslc`), created with
mode 0700, and is used only when the folder and the file belong to this user, nobody else can write
either, and the file's content matches the SHA-256 stored with it. Anything else: build the
parser from the grammar (about 40 ms) and carry on. `DSLC_PARSER_CACHE=0` turns the cache off.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
from pathlib import Path
from typing import Callable

import lark

from ..fileio import write_bytes


def cache_dir() -> Path | None:
    """The per-user cache folder, or None where there is none to trust."""
    if os.environ.get("DSLC_PARSER_CACHE", "1") == "0" or not hasattr(os, "getuid"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):
        return None
    return Path(base) / "dslc"


def load_or_build(key: str, build: Callable[[], lark.Lark]) -> lark.Lark:
    folder = cache_dir()
    if folder is None or not _private_dir(folder):
        return build()
    path = folder / f"parser-{key}-lark{lark.__version__}-py{sys.version_info[0]}{sys.version_info[1]}.bin"
    cached = _read_verified(path)
    if cached is not None:
        try:
            return lark.Lark.load(io.BytesIO(cached))
        except Exception:  # a stale or damaged cache is rebuilt, never fatal
            pass
    parser = build()
    try:
        buf = io.BytesIO()
        parser.save(buf)
        payload = buf.getvalue()
        write_bytes(path, hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    except OSError:
        pass  # a read-only home: no cache, same parser
    return parser


def _owned_and_private(st: os.stat_result, kind: Callable[[int], bool]) -> bool:
    return kind(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _private_dir(folder: Path) -> bool:
    """Create `folder` with mode 0700 if needed; True when it is a real folder of ours that no one
    else can write (not a symlink someone left for us)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        return _owned_and_private(os.lstat(folder), stat.S_ISDIR)
    except OSError:
        return False


def _read_verified(path: Path) -> bytes | None:
    """The cached payload, when the file is ours, private and intact."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not _owned_and_private(os.fstat(f.fileno()), stat.S_ISREG):
            return None
        digest, _, payload = f.read().partition(b"\n")
    return payload if hashlib.sha256(payload).hexdigest().encode() == digest else None
