"""Write the removal orders that ship with sleb: `python -m sleb.orders [MODEL] --methods ... --num-remove K`.

One search per method (resumed from the sleb cache when it ran before), written as
`sleb/orders/<name>-<method>.json` with the exact command in the file. Calibration
options are those of `sleb search`; nothing is written when a search fails.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from . import order_name, orders_dir, write_order

log = logging.getLogger("sleb.orders")


def build_parser() -> argparse.ArgumentParser:
    from ..cli import _model_args, _search_args

    p = argparse.ArgumentParser(prog="python -m sleb.orders", description=__doc__.split("\n\n")[0])
    _model_args(p)
    _search_args(p)
    p.add_argument("--methods", help="comma list of methods (default: --method)")
    p.add_argument("--num-remove", type=int, required=True, help="blocks to order (the largest ratio served)")
    p.add_argument("--name", help="the file name's model part (default: the Hub id's name, lower case)")
    p.add_argument("--out-dir", type=Path, help="where to write (default: the shipped folder, sleb/orders)")
    return p


def main(argv: list[str] | None = None) -> int:
    from ..calibration import build_calibration
    from ..cli import _refine_spec, _spec
    from ..errors import SlebError
    from ..loading import load_model
    from ..prune import find_removal, refine_removal

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if args.validate is not None:
            raise SlebError("sleb.orders does not validate (a validated pick is per count, not an order); use "
                            "`prune --validate` instead.")
        model, tokenizer, source = load_model(args.model, device=args.device, dtype=args.dtype)
        calib = build_calibration(tokenizer, _spec(args), model.config)
        base = source.base_model or source.name
        name = args.name or order_name(base)
        for method in (args.methods or args.method).split(","):
            result = find_removal(model, calib, args.num_remove, method.strip(), early_barrier=args.early_barrier,
                                  latter_barrier=args.latter_barrier, batch_size=args.batch_size, seed=args.seed,
                                  progress=not args.quiet, state_path=args.state, reference=args.reference)
            if _refine_spec(args):  # not nested: one refined set for every count the app may ask for
                result = refine_removal(model, calib, result, list(range(1, args.num_remove + 1)), _refine_spec(args),
                                        early_barrier=args.early_barrier, latter_barrier=args.latter_barrier,
                                        batch_size=args.batch_size, seed=args.seed, progress=not args.quiet,
                                        reference=args.reference)
            path = write_order(args.out_dir or orders_dir(), name, base, result, model_argument=source.name,
                               dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                               command=shlex.join(["python", "-m", "sleb.orders", *argv]))
            log.info("%s: %s removes %s; wrote %s", name, result.method, result.removed(result.max_remove), path)
    except SlebError as exc:
        log.error("error: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
