"""Generated code of `proto/serving/api/ner.proto` (regenerate: python -m serving.api.generate)."""
