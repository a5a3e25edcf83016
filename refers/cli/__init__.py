"""Command-line entry points. Each module exposes ``main(argv=None) -> int``."""
