"""A deliberately tiny third method, added through the Method protocol alone (issue 23): a dense grid
of density and RGB (no spherical harmonics), trilinearly interpolated at evenly spaced samples and
alpha-composited. Run it with `make sweep EXP=baselines/dense_grid/dense_grid.gin`."""

from baselines.dense_grid.method import DenseGrid  # noqa: F401  (registers the Gin configurable)
