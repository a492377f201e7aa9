"""Inference: validation against a model's signature, batching, image preprocessing."""
