"""gradc: a compiler-style differentiation engine for NumPy code.

    import numpy as np, gradc
    g = gradc.grad(lambda x: np.sum(np.sin(x) ** 2))(np.ones(3))
    print(gradc.make_graph(lambda x: np.sum(np.sin(x) ** 2))(np.ones(3)))
"""
from . import methods as _methods  # noqa: F401  (installs Tracer operators and methods)
from . import numpy_funcs as _numpy_funcs  # noqa: F401  (registers NumPy functions)
from . import numpy_linalg as _numpy_linalg  # noqa: F401
from . import ops  # noqa: F401
from .api import (RetraceWarning, asarray, grad, jit, jvp, linearize, make_graph,
                  stop_gradient, value_and_grad, vjp, vmap)
from .codegen import cache  # noqa: F401  (gradc.cache.clear(), gradc.cache.directory())
from .codegen.compile import GradcWarning
from .codegen.cuda import get_float32_matmul_precision, set_float32_matmul_precision
from .errors import (ArgumentError, ConcretizationError, DTypeError, EvaluationError,
                     GradcError, InvalidValueError, NonScalarOutputError, ReadOnlyError,
                     ScalarOverflowError, ShapeError, TangentDTypeError, TracerLeakError,
                     UnsupportedError)
from .interpret import eval_graph_checked as eval_graph
from .implicit import argmin, custom_root, fixed_point, implicit_diff, linear_solve
from .jacobians import hessian, hvp, jacfwd, jacobian, jacobian_plan, jacrev
from .prims.implicit import ConvergenceWarning
from .ir import Eqn, Graph, Lit, Primitive, Var
from .lib import numpy_composites as _numpy_composites  # noqa: F401  (more NumPy functions)
from .lib.conv import conv2d
from .lib.ode import odeint
from .prims.loops import cond, fori_loop, scan, while_loop
from .lib import nn  # noqa: F401  (gradc.nn: jax.nn's activations)
from .lib.nn import log_softmax, logsumexp, relu, sigmoid, softmax, softplus
from .transformed import show
from .symbolic import to_sympy
from .checking import check
from .custom import checkpoint, custom_jvp, custom_vjp, remat
from .drawing import draw

__version__ = "0.1.0"

__all__ = [
    "grad", "value_and_grad", "jvp", "vjp", "linearize", "jit", "vmap", "make_graph",
    "stop_gradient", "asarray",
    "eval_graph", "jacfwd", "jacrev", "jacobian", "jacobian_plan", "hessian", "hvp",
    "show", "to_sympy", "check", "draw", "cache", "GradcWarning", "ConvergenceWarning",
    "RetraceWarning",
    "set_float32_matmul_precision", "get_float32_matmul_precision",
    "linear_solve", "custom_root", "implicit_diff", "fixed_point", "argmin", "odeint",
    "conv2d", "logsumexp", "softmax", "log_softmax", "sigmoid", "relu", "softplus",
    "scan", "fori_loop", "cond", "while_loop", "custom_jvp", "custom_vjp",
    "checkpoint", "remat", "nn",
    "Graph", "Var", "Lit", "Eqn", "Primitive", "ops",
    "GradcError", "UnsupportedError", "ConcretizationError", "ArgumentError", "ShapeError",
    "NonScalarOutputError", "TracerLeakError", "DTypeError", "EvaluationError",
    "ScalarOverflowError", "InvalidValueError", "TangentDTypeError", "ReadOnlyError",
]
