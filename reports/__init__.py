"""Reports: pure functions of trial records (runs/<exp>/<id>/*.json) → tables, figures, HTML."""
