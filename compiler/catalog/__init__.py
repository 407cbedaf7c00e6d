"""Catalogs read from compiler/data: GPUs, model architectures and their shapes."""
