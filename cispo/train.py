"""`python -m cispo.train`: the entry point's name kept stable; its code is `cispo.cli.train`."""

from cispo.cli.train import main

if __name__ == "__main__":
    main()
