"""The lint stage: schema and cross-field rules, pins, suppressions."""
