"""``python -m analysis pareto|export|report``."""

import sys

from analysis._cli import main

if __name__ == "__main__":
    sys.exit(main())
