"""gRPC serving of clinical NER: the service, its engine and batcher, backends, metrics."""
