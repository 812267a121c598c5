"""Optimizer tier: jobs turning gradients and feedback into sparse versions; gRPC servicer, Celery tasks."""
