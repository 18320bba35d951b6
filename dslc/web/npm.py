"""npm packages in a cache folder: onnxruntime-web for `dslc export-web`, and the Node runtimes of the
portability bench. Installed once with `npm install --prefix CACHE PACKAGE`, then reused."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..diagnostics import DslError

ENV_VAR = "DSLC_NPM_CACHE"


def cache_dir() -> Path:
    """$DSLC_NPM_CACHE, else ~/.cache/dslc/npm."""
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "dslc" / "npm")


def find_package(name: str, cache: str | os.PathLike | None = None) -> Path | None:
    """node_modules/NAME in the cache folder when it is installed there, else None."""
    folder = Path(cache) if cache else cache_dir()
    pkg = folder / "node_modules" / name
    return pkg if (pkg / "package.json").is_file() else None


def ensure_package(name: str, cache: str | os.PathLike | None = None, timeout: float = 900) -> Path:
    """node_modules/NAME in the cache folder, installing it with npm the first time."""
    folder = Path(cache) if cache else cache_dir()
    found = find_package(name, folder)
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise DslError(f"npm is needed to install {name} (it is not on PATH)",
                       hint="install Node.js and npm (apt-get install nodejs npm), or pass the package's "
                            "folder with --ort-dist")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--prefix", str(folder), name],
                          capture_output=True, text=True, timeout=timeout)
    found = find_package(name, folder)
    if done.returncode != 0 or found is None:
        raise DslError(f"`npm install {name}` failed: {(done.stderr or done.stdout).strip()[-400:]}")
    return found
