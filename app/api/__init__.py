"""HTTP layer: thin routes over the inference service and the registry."""
