"""Datasets, node data loaders, partitioning across clients and the feature cache."""
