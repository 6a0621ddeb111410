"""Arithmetic of shares: prime fields, ChaCha20 streams, fixed-point encoding, sharing, DP."""
