"""Build, evaluate, document and publish the pruned variants listed in the zoo manifest.

    python zoo/publish.py                     # everything in zoo/manifest.yaml, pushed to the Hub
    python zoo/publish.py --only smollm2-135m-instruct-sleb-refine-20 --dry-run --out build/zoo
    python zoo/publish.py --only smollm2-135m-instruct-sleb-refine-10 --dry-run --out /tmp/zoo \\
        --set calibration.tokens=2048 --set calibration.seqlen=128 --set eval.max_windows=4 \\
        --set eval.zeroshot_limit=50          # a small evaluation budget (the card says so)

For each base: load it once, search once for all its ratios (cached), evaluate the dense model
and every variant (cached), and stage `<out>/<variant>/` exactly as it is uploaded. Then, unless
--dry-run, push each variant, and finally the zoo index (`<out>/_index/`: the org card and
`zoo.json`) and a collection listing every variant. Each base's removal order is also written
as an order file of `sleb.orders` (`<out>/_orders/<base>-<method>.json`, e.g. `...-sleb+refine.json`;
`--orders-dir sleb/orders` ships it with the app). The manifest is checked, and the token and
the network too, before any work. Exit status: 0 done; 1 publishing failed (rerun to finish);
2 bad manifest or arguments; 3 some variants skipped (a base that cannot be loaded here).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `zoo` package importable from the project root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sleb.errors import SlebError  # noqa: E402
from sleb.files import read_record, record_path
from sleb.loading import cache_dir  # noqa: E402
from sleb.orders import write_order  # noqa: E402
from sleb.removal import atomic_dir  # noqa: E402
from sleb.search import SearchResult  # noqa: E402
from zoo import card  # noqa: E402
from zoo.build import Built, ResultCache, SkipBase, build_base, dump_json  # noqa: E402
from zoo.hub import INDEX_KEY_FILE, Publisher, PublishError, sha256_file  # noqa: E402
from zoo.manifest import DEFAULT_MANIFEST, Base, Manifest, ManifestError, Variant, load_manifest  # noqa: E402

log = logging.getLogger("zoo.publish")

ROOT = Path(__file__).resolve().parents[1]
INDEX_DIR = "_index"
ORDERS_DIR = "_orders"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python zoo/publish.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default=str(DEFAULT_MANIFEST), help="the zoo manifest (default: zoo/manifest.yaml)")
    p.add_argument("--only", action="append", default=[],
                   help="variant name(s) to build, comma-separated or repeated (default: all)")
    p.add_argument("--dry-run", action="store_true", help="write the repository folders and plan.json; no network")
    p.add_argument("--out", default="build/zoo", help="where repository folders are staged (default: build/zoo)")
    p.add_argument("--cache", default=None, help="zoo result cache (default: $SLEB_CACHE/zoo or ~/.cache/sleb/zoo)")
    p.add_argument("--private", action="store_true", help="create the repositories private")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting for every base, e.g. eval.max_windows=4 (repeatable)")
    p.add_argument("--no-index", action="store_true", help="do not write or push the zoo index")
    p.add_argument("--orders-dir", default=None,
                   help=f"where each base's order file goes (default: <out>/{ORDERS_DIR}; sleb/orders ships it)")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    return p.parse_args(argv)


def display_path(path: Path) -> str:
    """A path as a reproduce command should show it: relative to the project root when inside it."""
    path = path.resolve()
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def zoo_command(manifest: Manifest, *variants: Variant) -> str:
    """The command that rebuilds and publishes these variants with the same settings."""
    parts = ["python", "zoo/publish.py"]
    if manifest.path.resolve() != DEFAULT_MANIFEST:
        parts += ["--manifest", display_path(manifest.path)]
    parts += ["--only", ",".join(v.name for v in variants)]
    for text in manifest.overrides:
        parts += ["--set", text]
    return shlex.join(parts)


def commit_message(built: Built) -> tuple[str, str]:
    r = built.results
    k = r["num_blocks_dense"] - r["num_blocks"]
    message = (f"Publish {built.variant.name}: {r['method'].upper()} removes {k} of {r['num_blocks_dense']} blocks "
               f"({100 * k / r['num_blocks_dense']:.0f}%)")
    description = (f"{card.headline_text(r)}\n\nRemoved blocks, in order: {r['removal_order']}. Every number comes "
                   f"from results.json of this commit, measured on {r['hardware']['name']}.\nReproduce: "
                   f"{r['commands']['zoo']}")
    return message, description


def write_base_order(manifest: Manifest, base: Base, built: list[Built], folder: Path) -> Path | None:
    """The base's search record as an order file of `sleb.orders`: `<folder>/<base name>-<method>.json`.

    Kept as it is when it already holds this search (same calibration windows, barriers, refinement
    and dtype) for every block count this one holds (a refined result holds one set per count it
    refined: not nested), so a rerun, or a build of fewer ratios, changes nothing.
    """
    if not built:
        return None
    longest = max(built, key=lambda b: SearchResult.from_dict(b.record["search"]).max_remove)  # records are cached
    record, results = longest.record, longest.results
    result = SearchResult.from_dict(record["search"])
    path = folder / f"{base.name}-{result.method}.json"

    def same_search(old: dict) -> bool:
        a, b = old.get("search") or {}, record["search"]
        keys = ("early_barrier", "latter_barrier", "refine_seeds", "refine_objective")
        return (old.get("dtype") == results["dtype"] and a.get("method") == b["method"]
                and (a.get("settings") or {}).get("calibration", {}).get("fingerprint")
                == b["settings"].get("calibration", {}).get("fingerprint")
                and all((a.get("settings") or {}).get(k) == b["settings"].get(k) for k in keys))

    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        if same_search(old) and _covers(old, result):
            log.info("The order file %s already holds this search", path)
            return path
    write_order(folder, base.name, base.base_model, result, model_argument=results["model_loaded"],
                dtype=results["dtype"], command=zoo_command(manifest, *[b.variant for b in built]))
    log.info("Wrote the order file %s (%s, %d blocks)", path, result.method, result.max_remove)
    return path


def _covers(old: dict, result: SearchResult) -> bool:
    """Whether an order file's search holds every block count `result` holds."""
    try:
        held = SearchResult.from_dict(old["search"])
    except (KeyError, TypeError):
        return False
    return all(held.covers(k) for k in (result.by_count or [result.max_remove]))


def index_entries(manifest: Manifest, out: Path, confirmed) -> list[tuple[dict, dict, str]]:
    """(results, record, sleb.json sha256) of every manifest variant staged in `out` that `confirmed` accepts."""
    entries = []
    for variant in manifest.variants:
        folder = out / variant.name
        if not (folder / "results.json").is_file() or not record_path(folder).is_file():
            continue
        results = json.loads((folder / "results.json").read_text())
        if results.get("repo_id") != variant.repo_id:
            continue
        sha = sha256_file(record_path(folder))
        if confirmed(variant, folder, sha):
            entries.append((results, read_record(folder), sha))
    return entries


def write_index(manifest: Manifest, out: Path, entries) -> Path:
    """`<out>/_index/`: the org card (README.md) and zoo.json, from the variants' own result files."""
    folder = out / INDEX_DIR
    data = {"format": "sleb-zoo-index/1", "org": manifest.org,
            "variants": [card.index_entry(results, record, sha) for results, record, sha in entries]}
    with atomic_dir(folder, overwrite=True) as tmp:
        (tmp / "README.md").write_text(card.index_readme(manifest.org, [e[0] for e in entries],
                                                         display_path(manifest.path)), encoding="utf-8")
        (tmp / INDEX_KEY_FILE).write_text(dump_json(data), encoding="utf-8")
    return folder


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    progress = not args.quiet
    if args.quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")  # the bars of lm-eval and transformers too
    try:
        manifest = load_manifest(args.manifest, overrides=args.overrides)
        only = [n.strip() for text in args.only for n in text.split(",") if n.strip()]
        selected = manifest.select(only)
    except ManifestError as exc:
        log.error("%s", exc)
        return 2
    out = Path(args.out)
    cache = ResultCache(Path(args.cache) if args.cache else cache_dir() / "zoo")
    publisher = Publisher(manifest.org, private=args.private or manifest.private)
    if not args.dry_run:
        try:
            publisher.preflight()
        except PublishError as exc:
            log.error("%s", exc)
            return 1
    status: dict[str, str] = {}
    plans = []
    push_broken: str | None = None
    bases = {}
    for variant in selected:
        bases.setdefault(variant.base.name, (variant.base, []))[1].append(variant)
    commands = {v.name: zoo_command(manifest, v) for v in selected}
    for base, variants in bases.values():
        log.info("Base %s (%s): %s", base.name, base.model, ", ".join(v.name for v in variants))
        try:
            built, failed = build_base(base, variants, out, cache, commands, progress=progress)
        except SkipBase as exc:
            log.warning("Skipping %s: %s", base.name, exc)
            status.update({v.name: f"skipped: {exc}" for v in variants})
            continue
        except SlebError as exc:
            log.error("Could not build %s: %s", base.name, exc)
            status.update({v.name: f"failed: {exc}" for v in variants})
            continue
        status.update({name: f"skipped: {why}" for name, why in failed.items()})
        write_base_order(manifest, base, built, Path(args.orders_dir) if args.orders_dir else out / ORDERS_DIR)
        for item in built:
            message, description = commit_message(item)
            plan = publisher.plan(item.folder, item.variant.name, message, description)
            plans.append(plan)
            if args.dry_run:
                status[item.variant.name] = f"staged in {item.folder}"
                continue
            if push_broken:
                status[item.variant.name] = f"not pushed: {push_broken}"
                continue
            try:
                status[item.variant.name] = publisher.push(plan)
            except PublishError as exc:
                log.error("%s", exc)
                push_broken = str(exc)
                status[item.variant.name] = f"failed: {exc}"
    index_status = None
    if not args.no_index:
        index_status = publish_index(manifest, out, publisher, status, args.dry_run, push_broken, plans)
    if args.dry_run:
        (out / "plan.json").parent.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(dump_json({"dry_run": True, "org": manifest.org, "index": manifest.index,
                                                  "pushes": [p.to_dict() for p in plans]}))
    log.info("Summary (%s):", "dry run, nothing sent" if args.dry_run else f"published to {manifest.org}")
    for variant in selected:
        log.info("  %-40s %s", variant.name, status.get(variant.name, "not built"))
    if index_status:
        log.info("  %-40s %s", "zoo index", index_status)
    if any(s.startswith(("failed", "not pushed")) for s in status.values()) or push_broken:
        log.error("Some pushes failed; results stay cached in %s: run the same command again to finish.", cache.root)
        return 1
    return 3 if any(s.startswith("skipped") for s in status.values()) else 0


def publish_index(manifest: Manifest, out: Path, publisher: Publisher, status: dict, dry_run: bool,
                  push_broken: str | None, plans: list) -> str | None:
    """Write the index from the staged variants (only those on the Hub when publishing) and push it."""
    def confirmed(variant, folder, sha):
        if dry_run or status.get(variant.name) in ("pushed", "unchanged"):
            return True
        if push_broken or variant.name in status:  # failed or skipped in this run
            return False
        try:  # staged by an earlier run: listed only if the Hub has exactly this version
            plan = publisher.plan(folder, variant.name, "")
            return publisher.remote_sha(plan) == sha
        except Exception as exc:
            log.warning("Could not check %s on the Hub (%s); leaving it out of the index.", variant.repo_id, exc)
            return False

    entries = index_entries(manifest, out, confirmed)
    if not entries:
        return None
    folder = write_index(manifest, out, entries)
    index = manifest.index
    plan = publisher.plan(folder, index["repo"], f"Zoo index: {len(entries)} variants", repo_type=index["type"],
                          key_file=INDEX_KEY_FILE, card_last=False,
                          space_sdk="static" if index["type"] == "space" else None)
    items = [(results["repo_id"], card.headline_text(results)) for results, _, _ in entries]
    plan.extra = {"collection": {"title": index["collection"], "items": items}} if index["collection"] else {}
    plans.append(plan)
    if dry_run:
        return f"staged in {folder}"
    if push_broken:
        return "not pushed (an earlier push failed)"
    try:
        result = publisher.push(plan)
        if index["collection"]:
            publisher.update_collection(index["collection"], items, "Models pruned with SLEB (ICML 2024).")
        return result
    except PublishError as exc:
        log.error("%s", exc)
        status["zoo index"] = f"failed: {exc}"
        return f"failed: {exc}"


if __name__ == "__main__":
    sys.exit(main())
