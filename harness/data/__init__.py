"""Scene loading: one representation (harness.data.scene) from every supported format."""
