"""Kein Shopstream: server."""
