"""The base model: loading it, driving its forward with explicit masks and positions, the dtype."""
