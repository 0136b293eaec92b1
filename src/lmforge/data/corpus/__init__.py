"""The corpus stage's machinery (the verb itself is lmforge.stages.corpus).

- schema: the config dataclasses, load_corpus_config, the manifest's config record
- inputs: opening sources (hub, mirror, files, built-in), preflight, the token counter
- shards: the deterministic .jsonl.gz writer and reader
- cache: per-source cache parts and their saved state (resume)
- streaming: phase 1, each source cleaned, deduplicated and budgeted into its cache
- assembly: phase 2, seeded mixing, output shards and the manifest
- analyze: --analyze-only, sampling sources into plan.json
- report: what the stage prints
"""
