"""onnx-serve: an HTTP model-serving microservice for ONNX models."""

__version__ = "0.1.0"
