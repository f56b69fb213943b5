"""Kernels of the latent prologue and the torch references that define them.

This subpackage imports nothing else from ctrlgan.
"""
