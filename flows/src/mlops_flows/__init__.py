"""Prefect flows of the MLOps platform: data versions, training, promotion, retraining."""
