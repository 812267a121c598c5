"""The inference engine: a compact decoder, sampling, continuous batching and classification.

Pure torch: no store, gRPC or Celery here, so it can be tested and benchmarked alone.
"""
