"""`python -m golfctl` runs the same CLI as the `golfctl` console script."""

from golfctl.cli import main

main()
