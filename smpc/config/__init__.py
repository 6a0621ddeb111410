"""Schemas of the files users write: the federation file and protocol spec files."""
