"""Datasets shipped inside the package (the canonical MNIST IDX files)."""
