"""Floor 2, orchestration: config, sweeps, trial identity, launching (local, SLURM), the trial
runner, records on disk, composition and reproduction. Only the entry point (harness/cli.py)
imports it (docs/design.md)."""
