"""Digests of a run's keep lists, to show a change of structure changed no decision.

Runs the real command (`dedup demo`, and `dedup run` on each `--source`) into fresh output
folders and digests every keep list: its rows sorted by path, every column but the two
that name when and in which Dagster run a decision was made (`decided_at`, `decided_in`),
written as CSV bytes. Two commits that decide alike give equal digests.

    python benchmarks/keep_list_digest.py --label before [--source ../shared/datasets/eurosat]
    ...change the code...
    python benchmarks/keep_list_digest.py --label after  [--source ...] --compare before
                                                              # results/keep_list_digest_<label>.json
"""

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, add_out_option, write_result  # noqa: E402

DEDUP = Path(sys.executable).with_name("dedup")
WHEN = ("decided_at", "decided_in")


def keep_list_digests(output: Path) -> dict[str, str]:
    """Threshold -> sha1 of its keep list's decisions (see the module doc)."""
    out = {}
    for path in sorted((output / "keep_lists").glob("*.parquet")):
        if path.stem.endswith("_pairs"):
            continue
        keep = pl.read_parquet(path)
        keep = keep.drop([c for c in WHEN if c in keep.columns]).sort("path")
        out[path.stem] = hashlib.sha1(keep.write_csv().encode()).hexdigest()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--label", required=True)
    p.add_argument("--source", type=Path, action="append", default=[])
    p.add_argument("--work", type=Path, default=Path("/tmp/keep_list_digest"))
    p.add_argument("--compare", default=None, help="label of an earlier result to compare with")
    add_out_option(p)
    args = p.parse_args()
    result: dict = {"label": args.label, "runs": {}}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    result["commit"] = commit.stdout.strip()
    runs = [("demo", ["demo"])] + [(s.name, ["run", "--source", str(s)]) for s in args.source]
    for name, command in runs:
        output = args.work / f"{args.label}_{name}"
        shutil.rmtree(output, ignore_errors=True)
        done = subprocess.run(
            [str(DEDUP), *command, "--output", str(output)], capture_output=True, text=True
        )
        if done.returncode not in (0, 1):
            raise SystemExit(done.stdout + done.stderr)
        result["runs"][name] = keep_list_digests(output)
        print(name, result["runs"][name], flush=True)
    path = write_result(f"keep_list_digest_{args.label}", result, args.out)
    print(path)
    if args.compare:
        earlier = json.loads((RESULTS / f"keep_list_digest_{args.compare}.json").read_text())
        same = earlier["runs"] == result["runs"]
        print(f"{'identical' if same else 'DIFFERENT'} to {args.compare} ({earlier['commit'][:8]})")
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
