"""oodbench: an open benchmark suite for out-of-distribution materials property prediction."""
import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("oodbench")
"""Decorator a plugin module uses to implement a hook of :mod:`oodbench.hookspecs`."""

__all__ = ["hookimpl", "__version__"]
