"""Engines: who owns the model's step and its KV cache (eager, or compiled fixed-shape steps)."""
