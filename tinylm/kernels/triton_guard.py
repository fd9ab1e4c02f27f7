"""The one place that imports triton for tinylm's kernels.

Triton is optional: CPU-only installs of torch have none, and torch.library.triton_op (which
registers a kernel so that torch.compile and CUDA graphs see it as one op) needs torch >= 2.6.
Without either, AVAILABLE is False, the kernel modules still import (they define their kernels
only when it is True), and kernels/select.py never picks them.
"""

try:
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton  # torch >= 2.6
except ImportError:  # no triton (CPU-only torch), or a torch too old for triton_op
    triton = tl = triton_op = wrap_triton = None

AVAILABLE = triton is not None
