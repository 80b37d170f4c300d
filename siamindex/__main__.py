"""`python -m siamindex` runs the command line."""

from siamindex.cli import main

main()
