"""`python -m cispo.compare`: the entry point's name kept stable; its code is `cispo.cli.compare`."""

import sys

from cispo.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
