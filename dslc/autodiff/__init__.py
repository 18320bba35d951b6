"""Reverse-mode automatic differentiation of IR graphs (see driver.py and rules/)."""
from .driver import grad, vjp

__all__ = ["grad", "vjp"]
