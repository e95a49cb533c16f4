"""`python -m cispo.config_reference`: the entry point's name kept stable; its code is `cispo.cli.config_reference`."""

import sys

from cispo.cli.config_reference import main

if __name__ == "__main__":
    sys.exit(main())
