"""Optimised versions of models: int8, fp16 and graph optimisation, checked for accuracy."""
