"""nextbest: the application shell — settings, CLI, embedded runtime for demo and tests."""

__version__ = "0.1.0"
