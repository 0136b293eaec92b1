"""Models: the training decoder, architecture configs, loading for evaluation and chat, HF files, export."""
