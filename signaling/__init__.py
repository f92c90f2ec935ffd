"""Kein Shopstream: signaling."""
