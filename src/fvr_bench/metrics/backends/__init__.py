"""Pretrained networks that metrics run on (ports of reference models, weight loading)."""
