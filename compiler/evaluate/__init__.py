"""The evaluate stage: metrics, contamination, the acceptance gate and the reports."""
