"""`python -m cispo.eval`: the entry point's name kept stable; its code is `cispo.cli.eval`."""

from cispo.cli.eval import main

if __name__ == "__main__":
    main()
