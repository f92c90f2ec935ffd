"""Kein Shopstream: media."""
