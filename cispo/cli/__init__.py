"""The command-line entry points: train, eval, compare and the config reference (thin: parse, call, exit)."""
