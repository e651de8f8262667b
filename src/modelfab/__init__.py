"""modelfab: a self-hostable AI factory."""

__version__ = "0.1.0"
