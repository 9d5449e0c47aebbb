"""imgpipe: reproducible image classification as a DVC pipeline."""

__version__ = "0.1.0"
