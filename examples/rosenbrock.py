"""Rosenbrock's function, for the ``gradc`` command:

    gradc show  examples/rosenbrock.py:rosen --args "f64[5]"
    gradc check examples/rosenbrock.py:rosen --args "f64[5]"
    gradc draw  examples/rosenbrock.py:rosen --args "f64[3]" --grad -o rosen_grad.svg

Run:  python examples/rosenbrock.py
"""
import numpy as np


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def main():
    import gradc
    x = np.array([0.5, -1.0, 2.0, 1.5, 0.2])
    report = gradc.check(rosen, x)
    print(report)
    return gradc.grad(rosen)(x), report.ok


if __name__ == "__main__":
    main()
