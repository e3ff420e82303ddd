"""golfctl: a staged toolkit to train, compress and score Parameter Golf language models."""

__version__ = "0.1.0"
