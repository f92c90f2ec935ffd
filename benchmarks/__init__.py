"""Kein Shopstream: benchmarks."""
