"""Build or unpack a model folder once (tiny test models, SmolLM2-135M) and print its path.

Usage: python scripts/prepare_model.py tiny|tiny-tied|smollm2-135m|PATH [--dtype float32|bfloat16]
       [--seed 0] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console

from rollout.models import BUILTIN, DTYPES, prepare_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help=f"one of {list(BUILTIN)} or a local Hugging Face folder")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--seed", type=int, default=0, help="weights seed of the tiny models")
    ap.add_argument("--cache-dir", default=None, help="default: $CISPO_CACHE or ~/.cache/cispo/models")
    args = ap.parse_args()
    console = Console(stderr=True)
    t0 = time.perf_counter()
    with console.status(f"preparing {args.name} ({args.dtype})  (SmolLM2 takes a few minutes the first time)"):
        path = prepare_model(args.name, args.cache_dir, dtype=args.dtype, seed=args.seed)
    console.print(f"ready in {time.perf_counter() - t0:.1f} s")
    print(path)


if __name__ == "__main__":
    main()
