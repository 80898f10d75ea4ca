"""Drafting: the heads, the context drafter, candidate trees, their calibration and the node budget."""
