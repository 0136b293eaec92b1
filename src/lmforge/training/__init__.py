"""Training: the one loop, its step, checkpoints with exact resume, progress and memory limits."""
