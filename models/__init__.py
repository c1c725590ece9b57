"""Pretrained backbones, classification heads and the transfer model that joins them."""
