"""Data: sources and the mirror, text cleaning, the corpus machinery, token storage, samplers, SFT data."""
