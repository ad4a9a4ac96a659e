"""Code generation for indexing equations (``gather``, ``scatter_add``, ``index_set``):
one jitted helper per equation, its loops specialised to the index spec."""
from __future__ import annotations

import numpy as np

from ..errors import with_location


def index_function(name: str, kind: str, eqn, inplace: bool = False,
                   dest: bool = False) -> str:
    """Source of a jitted function for one ``gather``, ``scatter_add`` or ``index_set``
    equation: explicit loops over the window ``x[spec]``, each window element mapped to
    its position in ``x`` by NumPy's indexing rules (advanced indices broadcast
    together; their axes go where the first one stood if they are adjacent, else first).
    ``index_set`` writes in C order, so with repeated indices the last write wins, into
    a copy of ``x`` or, ``inplace`` (``codegen.inplace``: nothing reads ``x`` after it),
    into ``x`` itself.  ``scatter_extremum`` combines each update into its element in
    the same order (``np.maximum(out[p], v)``: NumPy's NaN rules), into a copy of ``x``
    or, ``inplace``, into ``x``.  ``dest``: the result goes into an array the caller
    passes as the last parameter ``out`` (destination passing, ``pysource.out_buffer``:
    a large one comes from the pool of reused blocks, not from Numba's allocator)."""
    from ..prims.index import _indexed_shape
    if kind == "gather":
        x, *idx = eqn.inputs
        x_shape, dtype = tuple(x.shape), x.dtype
        params = ["x"]
    elif kind == "scatter_add":
        v, *idx = eqn.inputs
        x_shape, dtype = tuple(eqn.params["shape"]), v.dtype
        params = ["v"]
    else:
        x, v, *idx = eqn.inputs
        x_shape, dtype = tuple(x.shape), x.dtype
        params = ["x", "v"]
    spec = tuple(eqn.params["spec"])
    window = tuple(_indexed_shape(x_shape, spec, idx))
    loops, position = _index_plan(x_shape, spec, [tuple(i.shape) for i in idx])
    assert tuple(n for _, n in loops) == window, (loops, window)
    params += [f"i{k}" for k in range(len(idx))]
    assert not (dest and (inplace or not (window if kind == "gather" else x_shape)))
    if dest:
        params.append("out")
    element = f"[{', '.join(position)}]" if x_shape else ""
    here = f"[{', '.join(o for o, _ in loops)}]" if window else ""
    dt = "np.bool_" if np.dtype(dtype) == np.bool_ else f"np.{np.dtype(dtype).name}"

    op = f" op={eqn.params['op']}" if kind == "scatter_extremum" else ""
    lines = ["@_k.jit_helper", f"def {name}({', '.join(params)}):",
             f"    # {kind}[spec={spec!r}{op}]" + (", in place" if inplace else "")]
    # (index arrays' values are checked as NumPy checks them: the graph was traced with
    # valid ones, and a later call's out-of-bounds value would read or write outside x)
    for k, n in _index_axes(x_shape, spec).items():
        message = bounds_message(eqn, n)
        test = f"if _b < {-n} or _b >= {n}:"
        check = [f"    _b = i{k}", "    " + test] if idx[k].ndim == 0 else \
            [f"    for _b in i{k}.flat:", "        " + test]
        lines += check + [" " * (len(check[-1]) - len(check[-1].lstrip()) + 4) +
                          f"raise _k.EvaluationError({message!r})"]
    if kind == "gather":
        if not window:
            return "\n".join(lines + [f"    return x{element}"])
        if not dest:
            lines.append(f"    out = np.empty({window!r}, {dt})")
        inner = f"out{here} = x{element}"
    elif kind == "scatter_add":
        lines.append("    out[:] = 0" if dest else f"    out = np.zeros({x_shape!r}, {dt})")
        inner = f"out{element} += v{here if v.ndim else ''}"
    elif kind == "scatter_extremum":
        lines.append(_copied(inplace, dest))
        inner = f"out{element} = np.{eqn.params['op']}(out{element}, v{here if v.ndim else ''})"
    else:
        if not x_shape:
            return "\n".join(lines + ["    return v"])
        lines.append(_copied(inplace, dest))
        inner = f"out{element} = v{here if v.ndim else ''}"
    pad = "    "
    for o, n in loops:
        lines.append(f"{pad}for {o} in range({n}):")
        pad += "    "
    lines.append(pad + inner)
    lines.append("    return out")
    return "\n".join(lines)


def _copied(inplace: bool, dest: bool) -> str:
    """The line starting an update of ``x``: in place, into the caller's ``out``, or
    into a copy."""
    return "    out = x" if inplace else "    out[:] = x" if dest else "    out = x.copy()"


def bounds_message(eqn, n: int) -> str:
    """The error of an index array of ``eqn`` holding a value outside an axis of size
    ``n`` (the CPU's index functions and the CUDA kernels raise it alike)."""
    return with_location(f"gradc: {eqn.prim.name}: an index is out of bounds for an axis "
                         f"of size {n} (NumPy raises IndexError)", eqn.source or "")


def index_map(x_shape, spec, idx_shapes):
    """``(window, positions)``: the shape of the window ``x[spec]`` (NumPy's rules:
    advanced indices, integers beside index arrays included, broadcast together, their
    axes where the first one stood if they are adjacent, else first), and for each axis
    of x where an element of the window reads it: ``("slice", axis, start, step)``
    (``start + step * o[axis]``), ``("int", i)`` (``i`` in ``[0, n)``), or
    ``("array", k, axes, n)``: index array ``k`` at ``o[a]`` for each ``a`` of ``axes``
    (0 where it is None: a dimension of length 1), a position in ``[-n, n)``."""
    entries = _entries(x_shape, spec)
    has_arrays = any(e[0] == "a" for e in entries)
    advanced = [j for j, e in enumerate(entries) if has_arrays and e[0] in "ia"]
    adjacent = not advanced or advanced[-1] - advanced[0] + 1 == len(advanced)
    bshape = np.broadcast_shapes(*[idx_shapes[e[1]] for e in entries if e[0] == "a"]) \
        if has_arrays else ()

    # the output axes in order: ("basic", length) or the block of broadcast axes
    slots = []
    for j, e in enumerate(entries):
        if e[0] == "s":
            slots.append(("axis", j))
        elif e[0] == "n":
            slots.append(("new", j))
        elif advanced and j == advanced[0] and adjacent:
            slots.append(("block", j))
    if advanced and not adjacent:
        slots.insert(0, ("block", advanced[0]))

    window, axis_of, block = [], {}, []
    for what, j in slots:
        if what == "block":
            for n in bshape:
                block.append(len(window))
                window.append(int(n))
        elif what == "new":
            window.append(1)
        else:
            d = _x_axis(entries, j)
            start, stop, step = slice(*entries[j][1:]).indices(x_shape[d])
            axis_of[j] = len(window)
            window.append(len(range(start, stop, step)))

    positions = []
    for j, e in enumerate(entries):
        if e[0] == "n":
            continue
        n = x_shape[_x_axis(entries, j)]
        if e[0] == "s":
            start, _, step = slice(*e[1:]).indices(n)
            positions.append(("slice", axis_of[j], start, step))
        elif e[0] == "i":
            positions.append(("int", e[1] % n))
        else:
            shape = idx_shapes[e[1]]
            lead = len(bshape) - len(shape)
            positions.append(("array", e[1], tuple(None if s == 1 else block[lead + k]
                                                   for k, s in enumerate(shape)), n))
    return tuple(window), positions


def _index_plan(x_shape, spec, idx_shapes):
    """``(loops, position)``: the window's loop variables with their lengths, in output
    order, and for each axis of x the expression of the position it reads or writes."""
    window, positions = index_map(x_shape, spec, idx_shapes)
    loops = [(f"o{d}", n) for d, n in enumerate(window)]
    position = []
    for p in positions:
        if p[0] == "slice":
            _, d, start, step = p
            term = f"o{d}" if step == 1 else f"{step} * o{d}"
            position.append(term if start == 0 else f"{start} + {term}")
        elif p[0] == "int":
            position.append(str(p[1]))
        else:
            _, k, axes, n = p
            sub = ["0" if d is None else f"o{d}" for d in axes]
            ref = f"i{k}[{', '.join(sub)}]" if axes else f"i{k}"
            position.append(f"_k.wrap_index({ref}, {n})")
    return loops, position


def _entries(x_shape, spec) -> list:
    """The index spec's entries, with a whole slice for each axis of x it leaves out."""
    consumed = sum(1 for e in spec if e[0] in "sia")
    return list(spec) + [("s", None, None, None)] * (len(x_shape) - consumed)


def _index_axes(x_shape, spec) -> dict:
    """Index input number -> the length of the axis of x it indexes."""
    entries = _entries(x_shape, spec)
    return {e[1]: x_shape[_x_axis(entries, j)] for j, e in enumerate(entries) if e[0] == "a"}


def _x_axis(entries, j):
    """The axis of x that index entry j addresses (new axes address none)."""
    return sum(1 for e in entries[:j] if e[0] in "sia")
