"""Training objectives of masked generative models."""
