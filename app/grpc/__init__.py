"""gRPC front end: the Open Inference Protocol service over the data plane."""
