"""feedloop: a batch-plus-online recommendation platform (cross-cutting code)."""

__version__ = "0.1.0"
