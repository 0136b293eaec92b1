"""The tokenizer: the SentencePiece artifact, its Hugging Face export, exact piece-wise encoding, metrics."""
