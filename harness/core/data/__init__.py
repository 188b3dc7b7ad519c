"""Scene loading: one representation (harness.core.data.scene) from every supported format."""
