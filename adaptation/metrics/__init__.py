"""Evaluation metrics (pure Python / numpy)."""
