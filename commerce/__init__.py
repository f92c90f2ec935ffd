"""Kein Shopstream: commerce."""
