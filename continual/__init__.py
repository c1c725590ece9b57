"""Continual learning over task streams, built on Avalanche."""
