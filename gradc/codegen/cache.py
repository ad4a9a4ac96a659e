"""The on-disk cache of generated code (``gradc.cache``).

Layout, under ``directory()`` (``$GRADC_CACHE_DIR``, else ``$XDG_CACHE_HOME/gradc``,
else ``~/.cache/gradc``)::

    src/<key>.py                 generated source; <key> hashes the source and the
                                 versions of gradc, Numba, llvmlite and NumPy
    src/__pycache__/<key>.*      Numba's own cache of the machine code (``cache=True``)
    src/<key>.ok                 manifest: blake2b of each Numba cache file, written after
                                 a successful compile

Every file is written to a temporary name and moved into place (``os.replace``), so a
reader never sees half a file.  Numba's files are checked against the manifest before
Numba reads them: a file that is missing, altered or truncated makes the whole entry
stale, and it is deleted and compiled again (never loaded).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile

VERSION_TAG = None   # filled lazily: versions that make machine code incompatible


def directory() -> pathlib.Path:
    """The cache directory (created on first write)."""
    root = os.environ.get("GRADC_CACHE_DIR")
    if root:
        return pathlib.Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "gradc"


def clear() -> None:
    """Delete every cached entry (generated source and machine code)."""
    shutil.rmtree(directory(), ignore_errors=True)


def _installed(package: str) -> str:
    """Where ``package`` is installed and when: a stand-in for its version that needs no
    import (importing Numba costs 0.2 s; ``importlib.metadata`` 0.05 s)."""
    import importlib.util
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return f"{package} missing"
    st = os.stat(spec.origin)
    return f"{package} {spec.origin} {st.st_size} {st.st_mtime_ns}"


def _versions() -> str:
    global VERSION_TAG
    if VERSION_TAG is None:
        import numpy

        from .. import __version__
        # (the kernels the generated code calls are compiled into its machine code)
        kernels = pathlib.Path(__file__).with_name("kernels.py").stat()
        VERSION_TAG = (f"gradc {__version__} numpy {numpy.__version__} "
                       f"{_installed('numba')} {_installed('llvmlite')} "
                       f"kernels {kernels.st_size} {kernels.st_mtime_ns}")
    return VERSION_TAG


def key_of(source: str) -> str:
    """The cache key of a generated module: a hash of its text and the tool versions."""
    h = hashlib.sha256(source.encode())
    h.update(b"\0" + _versions().encode())
    return "g" + h.hexdigest()[:40]


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def source_path(key: str) -> pathlib.Path:
    return directory() / "src" / f"{key}.py"


def write_source(key: str, source: str) -> pathlib.Path:
    """Write the generated module (unless that exact text is there already)."""
    path = source_path(key)
    try:
        if path.read_text() == source:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    _atomic_write(path, source.encode())
    _drop_machine_code(key)       # machine code of an older text is stale
    return path


def _machine_code_files(key: str) -> list:
    folder = directory() / "src" / "__pycache__"
    try:
        return sorted(p for p in folder.iterdir()
                      if p.name.startswith(key + ".") and ".tmp." not in p.name)
    except OSError:
        return []


def _manifest_path(key: str) -> pathlib.Path:
    return directory() / "src" / f"{key}.ok"


def _digest(path: pathlib.Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _drop_machine_code(key: str) -> None:
    for p in _machine_code_files(key) + [_manifest_path(key)]:
        try:
            p.unlink()
        except OSError:
            pass


def validate(key: str) -> bool:
    """True when Numba's cache files for ``key`` are exactly those the manifest lists.
    Otherwise they are deleted (so Numba compiles afresh) and False is returned."""
    files = _machine_code_files(key)
    try:
        manifest = json.loads(_manifest_path(key).read_text())
        ok = bool(files) and manifest == {p.name: _digest(p) for p in files}
    except (OSError, ValueError):
        ok = False
    if not ok:
        _drop_machine_code(key)
    return ok


def seal(key: str) -> None:
    """Record the digests of Numba's cache files for ``key`` (after a compile)."""
    files = _machine_code_files(key)
    if files:
        manifest = {p.name: _digest(p) for p in files}
        _atomic_write(_manifest_path(key), json.dumps(manifest, sort_keys=True).encode())


def entries() -> list:
    """The keys of the cached modules."""
    folder = directory() / "src"
    try:
        return sorted(p.stem for p in folder.glob("g*.py"))
    except OSError:
        return []
