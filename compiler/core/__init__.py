"""The bottom layer: diagnostics, reporters, the spec loader, the schema and its defaults, resolved values, artifacts."""
