"""Secure federated averaging, one job per training round."""
