"""Picks kept between runs, one small JSON file per (graph, batch, machine key), in the user's cache
folder with the parser cache's rules (frontend/parser_cache.py): a folder that only its owner can
write, files written atomically and checked against the SHA-256 stored with them, never pickle. A
damaged, foreign or unreadable entry is ignored (the step is measured again and the entry rewritten);
no cache folder (a read-only home, DSLC_PARSER_CACHE=0) means no cache, same picks."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..fileio import write_bytes
from ..frontend.parser_cache import _private_dir, _read_verified, cache_dir

VERSION = 1  # of the entries' layout: another layout is ignored, not misread


def entry_path(fingerprint: str, batch: int, machine: dict, counts: dict | None = None) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    key = json.dumps({"graph": fingerprint, "batch": batch, "machine": machine, "counts": counts or {},
                      "v": VERSION}, sort_keys=True)
    return folder / "tune" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def load(fingerprint: str, batch: int, machine: dict, counts: dict | None = None) -> dict | None:
    """The stored record for this key, or None (absent, damaged, not ours, another key)."""
    path = entry_path(fingerprint, batch, machine, counts)
    if path is None or not _private_dir(path.parent.parent) or not _private_dir(path.parent):
        return None
    payload = _read_verified(path)
    if payload is None:
        return None
    try:
        record = json.loads(payload.decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("v") != VERSION or record.get("graph") != fingerprint \
            or record.get("batch") != batch or record.get("machine") != machine \
            or record.get("counts", {}) != (counts or {}):
        return None  # (a hash collision or an entry copied from elsewhere)
    return record


def store(record: dict) -> Path | None:
    """Write `record` (its graph, batch and machine keys it); None where there is no cache."""
    path = entry_path(record["graph"], record["batch"], record["machine"], record.get("counts"))
    if path is None or not _private_dir(path.parent.parent) or not _private_dir(path.parent):
        return None
    payload = json.dumps({**record, "v": VERSION}, sort_keys=True).encode()
    try:
        write_bytes(path, hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    except OSError:
        return None
    return path
