"""Pipeline stages, one module per CLI verb (see lmforge.cli.COMMANDS)."""
