"""`python -m siamindex` runs the command line."""

from siamindex.cli import main

if __name__ == "__main__":  # serve --workers starts processes that import this module again
    main()
