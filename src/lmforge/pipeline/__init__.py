"""The pipeline: the stage contract and its runner, `lmforge run`, REPORT.md, lineage verification."""
