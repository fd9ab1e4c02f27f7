"""Optional fast paths, each beside the plain function it replaces and tested equal to it.

select.py is the one place that decides which apply (and lists them all). Kernel modules that
need triton import it through triton_guard.py only, and are themselves imported only on the
CUDA paths that use them, so a CPU-only install never pays for triton. This package imports
model/ (the plain code it mirrors) and util/; never generate/, data/, train/ or the CLI.
"""
