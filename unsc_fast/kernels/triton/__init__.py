"""The Triton kernels, one module per op: :mod:`.accumulate`, :mod:`.accumulate_conv`,
:mod:`.project_grads`; :mod:`.common` holds what they share, and :mod:`.backend` checks that
Triton can run here and registers the three ops with :mod:`unsc_fast.dispatch`.

This file imports nothing, so the kernel modules import without a GPU (compile-ahead checks,
torch.compile tracing); only :mod:`.backend` refuses to load where Triton cannot launch.
"""
