"""`python -m vpltool` runs the command line."""

from vpltool.cli import main

if __name__ == "__main__":
    main()
