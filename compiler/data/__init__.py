"""Catalogs as data (GPUs, model architectures, version rules, diagnostic codes), each entry sourced."""
