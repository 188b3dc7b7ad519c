"""A short real training of one Block-NeRF block on the procedural street improves PSNR over the
initial model, scored through harness.core.metrics on a held-out view of the block."""

import gin
import numpy as np
import torch

from harness.core.data.rays import RaySampler
from harness.core.metrics import psnr


def test_short_street_training_improves_psnr():
    import harness.run.registry  # noqa: F401
    from baselines.block_nerf import BlockNeRF, MipField, PoseNoise, PoseRefinement, Visibility
    from harness.core.data.load_scene import load_scene

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gin.clear_config()
        gin.parse_config(["load_scene.path = 'street'", "load_scene.format = 'procedural'"])
        scene = load_scene()
        gin.clear_config()
        m = BlockNeRF(scene, 0, block=1, batch_size=256, field=MipField(n_coarse=12, n_fine=12, width=48, near=0.5),
                      visibility=Visibility(), pose_refinement=PoseRefinement(),
                      pose_noise=PoseNoise(rotation_deg=1.0, translation_frac=0.01))
        test = m.trial_scene.split("test")
        assert 0 < len(m.train_index) < len(scene.split("train"))  # trains on its block only
        views = [0, len(test) // 2]

        def score():
            return float(np.mean([psnr(m.render_view(test, i), test.images[i]) for i in views]))

        before = score()
        tr = m.trial_scene.split("train")
        sampler = RaySampler(tr.images, tr.cameras, 0)
        for step in range(80):
            m.train_step(step, sampler.sample(step, m.batch_size))
        after = score()
        assert after > before + 1.0, (before, after)
    finally:
        torch.set_num_threads(old)
