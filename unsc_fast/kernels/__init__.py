"""Implementations of the ops in :mod:`unsc_fast.ops`, one module per backend.

Each module registers its functions with :func:`unsc_fast.dispatch.register` when imported:
``reference`` (plain PyTorch), ``cpp`` (the compiled extension, CPU), ``cuda`` (the compiled
extension, CUDA) and ``triton``. Call them through :mod:`unsc_fast.ops`, which validates.
"""
