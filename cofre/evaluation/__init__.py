"""Metrics: generative perplexity, entropy, MAUVE, validation perplexity, lm-eval, latency, CKA."""
