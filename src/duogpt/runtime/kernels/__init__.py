"""Compiled and Triton kernels for dual-sparse products."""
