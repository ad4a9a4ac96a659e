"""Differentiable algorithms written with gradc operations (composites, not primitives)."""
