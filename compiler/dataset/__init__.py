"""Datasets as every stage sees them: record readers, formats, chat templates and the train sources (mix, split)."""
