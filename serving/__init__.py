"""gRPC serving of clinical NER (filled by the serving issue)."""
