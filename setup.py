"""Shim for tools that still run setup.py: the metadata, packages and package data live in
pyproject.toml (PEP 621); pip builds and installs (``pip install -e .`` included, PEP 660) from there."""
from setuptools import setup

setup()
