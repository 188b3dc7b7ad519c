"""Floor 1, the core: what methods, reports and the harness share (scenes and rays, metrics,
the Method protocol, the record format, errors). It imports nothing above it (docs/design.md)."""
