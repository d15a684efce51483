"""HTTP surfaces: one module per public API, one error table, shared dependencies."""
