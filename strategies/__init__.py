"""Aggregation strategies: Flower's implementations, selected by name, behind fedgraft's guards."""
