"""Samplers under a transformer-block budget, warm-start (reuse) policies and budget allocation."""
