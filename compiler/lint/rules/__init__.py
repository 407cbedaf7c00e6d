"""Cross-field lint rules: a context, a registry, one module per spec section."""
