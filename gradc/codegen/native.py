"""Compiled code as a plain shared library, so that a new process runs it without Numba.

Importing Numba and readying its compiler costs ~0.35 s at the first call of a process,
even when the machine code comes from Numba's disk cache (most of it is Numba's
registries and SciPy's import; measured in docs/benchmarks.md, C1).  For code that needs
no Python objects at run time, gradc therefore also writes the machine code as a shared
library, which a later process loads with ``ctypes`` in a few milliseconds:

* **build** (in the process that compiles, Numba at hand, in a background thread after
  the first call, ``build_soon``): a ``numba.cfunc`` entry with a
  C signature, ``int64 entry(void **pointers)``, takes the data pointers of the inputs,
  constants and output buffers, calls the generated main function, and reports where
  each result is: ``info[i] = j`` when result ``i`` is output buffer ``j``, ``-1`` when
  it was copied into the result slot ``i``.  It returns 1 when the main function raised
  (a failed guard, for example) and 0 otherwise.  Its LLVM module, Numba's runtime
  linked in, is emitted as position-independent object code and linked with the system C
  compiler (``$CC``, else ``cc``).  Calls to Numba's C helpers (the runtime's allocator,
  exception helpers) go through pointer slots ("thunks") that the loader fills.
  Graphs that run Python code (object-mode blocks: large matrix products on NumPy's
  BLAS) and threaded code (the parallel target, direct convolutions) are not built: they
  keep Numba's own disk cache.
* **load** (no Numba import): the manifest is checked (digest of the library, CPU),
  Numba's two C extension modules ``_helperlib`` and ``_nrt_python`` are loaded by file
  (their initialisers are C, not Python), the library is opened with ``ctypes`` and the
  thunk slots are filled from the extensions' tables of helper addresses.

Files, under ``gradc.cache.directory()``: ``native/<key>.so`` and ``native/<key>.json``
(the manifest, written last).  Anything missing, altered or for another CPU is ignored.
``GRADC_NATIVE=0`` turns both steps off.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

import numpy as np

from . import cache

FORMAT = 1           # of the manifest and the entry's calling convention


def enabled() -> bool:
    """On Linux (where the processor can be fingerprinted cheaply), unless
    ``GRADC_NATIVE=0``."""
    return os.environ.get("GRADC_NATIVE", "1") != "0" and sys.platform.startswith("linux")


def _paths(key: str):
    folder = cache.directory() / "native"
    return folder / f"{key}.so", folder / f"{key}.json"


_CPU = []


_CPU_FIELDS = ("vendor_id", "cpu family", "model", "model name", "flags",  # x86
               "CPU implementer", "CPU architecture", "CPU variant", "CPU part",
               "Features", "isa", "uarch")                                 # arm, riscv


def cpu_fingerprint() -> str:
    """The processor the machine code was built for: the machine type and the model and
    instruction-set lines of the first processor in ``/proc/cpuinfo`` (read in ~0.1 ms;
    LLVM's own host query needs llvmlite, a 35 ms import)."""
    if not _CPU:
        import platform
        text = platform.machine() + "\n"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if not line.strip():
                        break
                    if line.split(":")[0].strip() in _CPU_FIELDS:
                        text += line
        except OSError:
            pass
        _CPU.append(hashlib.blake2b(text.encode(), digest_size=8).hexdigest())
    return _CPU[0]


# ---------------------------------------------------------------- building

def entry_source(compiled) -> str:
    """The ``_entry(pointers)`` function for ``compiled`` (see the module docstring)."""
    graph = compiled.graph
    lines = ["def _entry(p):"]
    names, k = [], 0

    def view(shape, dtype):
        nonlocal k
        dt = "np.bool_" if np.dtype(dtype) == np.bool_ else f"np.{np.dtype(dtype).name}"
        text = f"numba.carray(p[{k}], {tuple(shape) or (1,)!r}, {dt})"
        k += 1
        return text

    for i, v in enumerate(graph.inputs):
        lines.append(f"    a{i} = {view(v.shape, v.dtype)}" + ("[0]" if v.ndim == 0 else ""))
        names.append(f"a{i}")
    for i, value in enumerate(compiled._consts):
        lines.append(f"    c{i} = {view(value.shape, value.dtype)}")
        names.append(f"c{i}")
    for j, (shape, dtype, _) in enumerate(compiled._outs):
        lines.append(f"    o{j} = {view(shape, dtype)}")
        names.append(f"o{j}")
    lines += ["    try:",
              f"        r = main({', '.join(names)})",
              "    except Exception:",
              "        return 1",
              f"    info = {view((len(graph.outputs),), np.int64)}"]
    for i, v in enumerate(graph.outputs):
        lines.append(f"    s{i} = {view(v.shape, v.dtype)}")
        if v.ndim == 0:
            lines += [f"    s{i}[0] = r[{i}]", f"    info[{i}] = -1"]
            continue
        same = [j for j, (shape, dtype, _) in enumerate(compiled._outs)
                if tuple(shape) == tuple(v.shape) and np.dtype(dtype) == np.dtype(v.dtype)]
        lines.append(f"    info[{i}] = -1")
        for j in same:
            lines.append(f"    if r[{i}].ctypes.data == o{j}.ctypes.data:")
            lines.append(f"        info[{i}] = {j}")
        # the copy as plain loops (a slice assignment would compile Numba's broadcasting)
        index = ", ".join(f"i{d}" for d in range(v.ndim))
        lines.append(f"    if info[{i}] < 0:")
        for d, n in enumerate(v.shape):
            lines.append("    " * (d + 2) + f"for i{d} in range({n}):")
        lines.append("    " * (v.ndim + 2) + f"s{i}[{index}] = r[{i}][{index}]")
    lines.append("    return 0")
    return "\n".join(lines) + "\n"


def _helper_tables() -> dict:
    """Name -> address of the C helpers of Numba's runtime, from its two C extension
    modules (loaded by file when Numba itself is not imported)."""
    import importlib.machinery
    import importlib.util
    table = {}
    for name, prefix in (("numba._helperlib", "numba_"),
                         ("numba.core.runtime._nrt_python", "NRT_")):
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.find_spec("numba")
            folder = os.path.join(spec.submodule_search_locations[0],
                                  *name.split(".")[1:-1])
            stem = name.rsplit(".", 1)[1]
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(folder, stem + suffix)
                if os.path.exists(path):
                    break
            else:
                raise ImportError(f"no extension module for {name}")
            loader = importlib.machinery.ExtensionFileLoader(name, path)
            spec = importlib.util.spec_from_file_location(name, path, loader=loader)
            module = importlib.util.module_from_spec(spec)
        # the C names, as Numba registers them with LLVM
        table.update((n if n.startswith("_") else prefix + n, address)
                     for n, address in module.c_helpers.items())
    return table


def _signature(fn_type: str):
    """``'ptr (ptr, i64)'`` -> ``('ptr', ['ptr', 'i64'])``; None for varargs."""
    m = re.fullmatch(r"(.+?) \((.*)\)", fn_type)
    if m is None or "..." in m.group(2):
        return None
    params = [p.strip() for p in m.group(2).split(",")] if m.group(2).strip() else []
    return m.group(1), params


def _thunks(decls: dict) -> str:
    """LLVM IR that defines each declared function as a jump through a pointer slot."""
    out = []
    for name, (ret, params) in decls.items():
        slot = f'@"__gradc_slot.{name}"'
        formals = ", ".join(f"{t} %a{i}" for i, t in enumerate(params))
        call = f"musttail call {ret} %f({formals})"
        out += [f"{slot} = global ptr null",
                f'define {ret} @"{name}"({formals}) {{',
                f"  %f = load ptr, ptr {slot}",
                f"  %r = {call}" if ret != "void" else f"  {call}",
                f"  ret {ret} %r" if ret != "void" else "  ret void",
                "}"]
    return "\n".join(out) + "\n"


_pending: dict = {}            # key -> the thread building its library
_lock = threading.Lock()


def build_soon(compiled) -> None:
    """``build(compiled)`` in a background thread, so that the first call does not wait
    for it (~0.2 s), unless this process builds that key already.  The thread is not a
    daemon: the interpreter waits for it at exit, so a short script still leaves the
    library for the next process."""
    with _lock:
        if compiled.key in _pending:
            return
        thread = threading.Thread(target=_build_and_forget, args=(compiled,),
                                  name="gradc-native-build")
        _pending[compiled.key] = thread
    thread.start()


def _build_and_forget(compiled) -> None:
    try:
        build(compiled)
    finally:
        with _lock:
            _pending.pop(compiled.key, None)


def wait() -> None:
    """Wait for the libraries being built in the background."""
    while True:
        with _lock:
            threads = list(_pending.values())
        if not threads:
            return
        for thread in threads:
            thread.join()


if hasattr(os, "register_at_fork"):
    # a child forked while a build holds Numba's compiler lock would wait on it forever
    os.register_at_fork(before=wait)


def build(compiled) -> bool:
    """Build and store the shared library of ``compiled``.  Where the graph does not
    qualify or a tool is missing, the manifest says so (a later process does not try
    again) and False is returned: the caller keeps using Numba."""
    if not enabled() or _threaded(compiled):
        return False
    try:
        reason = _build(compiled)
    except Exception:               # never fail the user's code over a cache entry; a
        return False                # later process tries again (a full disk, a timeout)
    finally:
        # compiling the entry may have added an overload of the main function to
        # Numba's cache: record it, or the next process would find the entry altered
        cache.seal(compiled.key)
    if reason:
        manifest = {"format": FORMAT, "none": reason, "cpu": cpu_fingerprint()}
        _, manifest_path = _paths(compiled.key)
        try:
            cache._atomic_write(manifest_path, json.dumps(manifest).encode())
        except OSError:
            pass
    return not reason


def _build(compiled) -> str:
    """Build; the reason why not, or ''."""
    # (known without compiling the entry: an object-mode block, or a call of a kernel
    # that has one, kernels.OBJECT_MODE_CALLS; building to find it out took a background
    # thread's seconds, during the first calls of every solver's program)
    from .kernels import OBJECT_MODE_CALLS
    if any(c in compiled.source for c in ("numba.objmode(",) + OBJECT_MODE_CALLS):
        return "runs Python code (an object-mode block)"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc, gcc or $CC) to link a shared library")
    import llvmlite.binding as llvm
    import numba
    from numba import types

    scope = {"numba": numba, "np": np, "main": compiled.dispatcher}
    exec(compile(entry_source(compiled), f"<gradc entry of {compiled.key}>", "exec"), scope)
    entry = numba.cfunc(types.int64(types.CPointer(types.voidptr)), error_model="numpy",
                        fastmath=compiled.options["fastmath"])(scope["_entry"])
    final = entry._library._final_module
    module = llvm.parse_bitcode(final.as_bitcode())
    # a function that reads its Numba environment runs Python code (an object-mode
    # block), except for the one that turns a dynamic exception into Python objects
    for chunk in str(module).split("\ndefine ")[1:]:
        if re.search(r'load ptr, ptr @"?_ZN08NumbaEnv', chunk):
            name = re.search(r'@"?([^"( ]+)', chunk).group(1)
            if not name.startswith("__excinfo_unwrap_args"):
                return f"runs Python code (an object-mode block in {name[:60]})"
    helpers = _helper_tables()
    process = ctypes.CDLL(None)
    decls = {}
    for fn in module.functions:
        if not fn.is_declaration or fn.name.startswith("llvm."):
            continue
        if fn.name in helpers:
            sig = _signature(str(fn.global_value_type))
            if sig is None:
                return f"helper {fn.name} takes variable arguments"
            decls[fn.name] = sig
        elif not hasattr(process, fn.name):
            return f"calls {fn.name}, neither a Numba helper nor in the process"
    if decls:
        module.link_in(llvm.parse_assembly(_thunks(decls)))
    module.verify()
    target = llvm.Target.from_triple(module.triple)
    machine = target.create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
        opt=3, reloc="pic", codemodel="default")
    lib_path, manifest_path = _paths(compiled.key)
    lib_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib_path.parent, prefix=".build-") as tmp:
        obj = os.path.join(tmp, "entry.o")
        with open(obj, "wb") as f:
            f.write(machine.emit_object(module))
        so = os.path.join(tmp, "entry.so")
        done = subprocess.run([compiler, "-shared", "-o", so, obj], capture_output=True,
                              timeout=120)
        if done.returncode != 0:
            raise OSError(f"{compiler} failed: {done.stderr.decode(errors='replace')[:500]}")
        with open(so, "rb") as f:
            data = f.read()
    cache._atomic_write(lib_path, data)
    manifest = {"format": FORMAT, "entry": entry.native_name, "thunks": sorted(decls),
                "digest": hashlib.blake2b(data, digest_size=16).hexdigest(),
                "cpu": cpu_fingerprint()}
    cache._atomic_write(manifest_path, json.dumps(manifest, sort_keys=True).encode())
    return ""


# ---------------------------------------------------------------- loading

class Native:
    """A loaded shared library of one compiled graph: ``native(args, outs)`` runs it on
    the inputs and constants ``args`` and the output buffers ``outs``; it returns the
    results, or None when the code raised (the caller then runs Numba's code, which
    raises the same error with its message)."""

    def __init__(self, library, function, compiled):
        self._library = library           # keeps the library loaded
        self._function = function
        graph = compiled.graph
        self._inputs = [(v.ndim == 0, np.dtype(v.dtype)) for v in graph.inputs]
        self._results = [(tuple(v.shape) or (1,), np.dtype(v.dtype), v.ndim == 0)
                         for v in graph.outputs]

    def __call__(self, args, outs):
        held = []
        for a, (scalar, dtype) in zip(args, self._inputs):
            held.append(np.asarray(a, dtype).reshape(1) if scalar
                        else np.ascontiguousarray(a, dtype))
        held += [np.ascontiguousarray(c) for c in args[len(self._inputs):]]
        held += outs
        info = np.empty(len(self._results), np.int64)
        slots = [np.empty(shape, dtype) for shape, dtype, _ in self._results]
        pointers = np.array([a.ctypes.data for a in held + [info] + slots], np.uintp)
        if self._function(pointers.ctypes.data) != 0:
            return None
        return tuple(outs[j] if j >= 0 else (slots[i][0] if self._results[i][2]
                                             else slots[i])
                     for i, j in enumerate(info.tolist()))


def _threaded(compiled) -> bool:
    """Code that runs loops on Numba's threading layer (target="parallel"), which only
    Numba can start."""
    return bool(compiled.options.get("parallel"))


def load(compiled) -> tuple:
    """``(native, known)``: the shared library of ``compiled`` from the cache (or None),
    and whether the cache has settled the question for this CPU (a library, or a note
    that the graph does not qualify).  When not ``known``, the caller builds one."""
    if not enabled() or _threaded(compiled):
        return None, True
    lib_path, manifest_path = _paths(compiled.key)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None, False
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT
            or manifest.get("cpu") != cpu_fingerprint()):
        return None, False
    if "none" in manifest:
        return None, True
    try:
        data = lib_path.read_bytes()
    except OSError:
        return None, False
    if manifest.get("digest") != hashlib.blake2b(data, digest_size=16).hexdigest():
        return None, False
    try:
        helpers = _helper_tables() if manifest["thunks"] else {}
        library = ctypes.CDLL(str(lib_path))
        for name in manifest["thunks"]:
            ctypes.c_void_p.in_dll(library, f"__gradc_slot.{name}").value = helpers[name]
        function = library[manifest["entry"]]
    except (OSError, KeyError, AttributeError, ImportError, TypeError, ValueError):
        return None, True           # intact but unusable here: Numba's cache serves
    function.restype = ctypes.c_int64
    function.argtypes = [ctypes.c_void_p]
    return Native(library, function, compiled), True
