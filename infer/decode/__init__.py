"""Decode loops: draft -> verify -> accept -> emit, for one row and for a batch; the baselines."""
