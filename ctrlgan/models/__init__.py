"""Bundled default models (package data): one artifact directory per model name."""
