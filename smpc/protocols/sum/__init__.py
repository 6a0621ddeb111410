"""Secure sum, count and mean."""
