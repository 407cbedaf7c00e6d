"""Authoring helpers: write a new spec (init), compare two specs (diff), translate peer configs (importers)."""
