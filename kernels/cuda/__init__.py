"""CUDA C++ kernels behind `impl='cuda'`, JIT-built with torch.utils.cpp_extension on first use
(only compositing has one). Nothing is built at import time."""
