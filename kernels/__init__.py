"""Reference PyTorch ops for radiance-field rendering (the specification for fast kernels).

Each public op takes `impl`: 'torch' or 'auto' run the reference here; 'triton'/'cuda' raise
NotImplementedError until those kernels exist. Nothing is imported or built at import time;
use the submodules directly: `kernels.sh`, `kernels.grid`, `kernels.render`, `kernels.tv`.
"""
