"""golfctl: a staged toolkit to train, compress and score Parameter Golf language models."""

__version__ = "0.1.0"

# Set by the exported train_gpt.py (golfctl/export.py): the revision it was exported from and its
# own path, so that its files record what golfctl's chain records and its budget counts itself.
EXPORTED: dict | None = None
