"""Jinja2 message templates, one folder per language (data shipped with the package)."""
