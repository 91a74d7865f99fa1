"""``python -m study search|worker|status``."""

import sys

from study.cli import main

if __name__ == "__main__":
    sys.exit(main())
