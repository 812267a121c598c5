"""Inference tier: engine (model runner, batcher, offload, hot-apply), gRPC servicer and queue consumer."""
