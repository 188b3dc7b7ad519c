"""Block-NeRF baseline: per-block mip-NeRF with appearance/exposure conditioning, visibility, pose
refinement, and composition of blocks (docs/block_nerf.md). Importing registers the Gin configurables."""

from baselines.block_nerf.depth import DepthLoss  # noqa: F401
from baselines.block_nerf.method import BlockNeRF  # noqa: F401
from baselines.block_nerf.partition import BlockPartition  # noqa: F401
from baselines.block_nerf.parts import (  # noqa: F401
    Appearance,
    MipField,
    Optimization,
    PoseNoise,
    PoseRefinement,
    Visibility,
)
from baselines.block_nerf.training import Schedule  # noqa: F401
