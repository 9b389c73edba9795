"""Text data: the GPT-2 tokenizer, document corpora, and packed token blocks for MDLM training."""
