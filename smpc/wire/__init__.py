"""Bytes on the wire: the sealed share envelope and the signed control messages."""
