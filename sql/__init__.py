"""Kein Shopstream's schema: numbered migrations under ``migrations/`` (package data).

A package so that the migrations travel inside every wheel and image; the runner in
``server.db`` reads them from here, never from a source checkout.
"""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
