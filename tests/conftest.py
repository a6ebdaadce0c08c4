"""Test set-up shared by every test file.

Triton kernels run in CI on the CPU through Triton's interpreter, which must be switched on
before anything imports triton: hence here, at collection time, when no GPU is present.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
