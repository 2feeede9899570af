"""Where the labelled images come from: an ImageFolder root, or the built-in demo set."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

from dedup_assets.core.data.image_folder import DEFAULT_MAX_FILE_BYTES, FolderScan
from dedup_assets.core.data.layout import DEFAULT_OUTPUT, OutputLayout
from dedup_assets.core.data.source_index import ClassListing, list_source, verify_listings
from dedup_assets.core.data.splits import SplitLayout, detect_splits
from dedup_assets.core.quality.demo_data import ensure_demo_dataset

GROUND_TRUTH_NAME = "ground_truth.csv"


class _Snapshot:
    """The listings this process took while `one_listing_per_run` is active, and the
    unsplit scans it was given, by (root, include_hidden)."""

    active = False
    listings: dict[tuple[str, bool, str], tuple[FolderScan, dict[str, ClassListing]]] = {}
    scanned: dict[tuple[str, bool], FolderScan] = {}


_SNAPSHOT = _Snapshot()


@contextmanager
def one_listing_per_run(
    scanned: tuple[Path, bool, FolderScan] | None = None,
) -> Iterator[None]:
    """Within the block, a source is listed once in this process: the first listing of it
    is what every later `ImageSource.list_source` of it gets (the one `dedup run` plans
    from, then its index job's), so the index holds the same snapshot the run planned from
    (a file added in between waits for the next run instead of entering the index only), and
    a run lists its source once, not twice (1.4 s at 135,000 images). `scanned`: (root,
    include_hidden, its `scan_image_folder`) taken already, the scan of that first listing
    when the source is not split (`dedup run`'s own look at the source before its imports,
    `RunInputs.scan`: 0.15-0.35 s less on EuroSAT, the listing beside the decoder and the
    workers' start)."""
    _SNAPSHOT.active, _SNAPSHOT.listings = True, {}
    _SNAPSHOT.scanned = {} if scanned is None else {(str(scanned[0]), scanned[1]): scanned[2]}
    try:
        yield
    finally:
        release_listings()


def release_listings() -> None:
    """End `one_listing_per_run`'s snapshot early: once the index holds the listing, its
    file scan (about 460 MB at a million images) need not last the rest of the run."""
    _SNAPSHOT.active, _SNAPSHOT.listings, _SNAPSHOT.scanned = False, {}, {}


class ImageSource(dg.ConfigurableResource):
    """An ImageFolder (`<root>/<class>/<image>`, or `<root>/<split>/<class>/<image>`), read
    only; never modified.

    root: the dataset folder; empty means the built-in demo dataset, generated
    deterministically from `demo_seed` into `demo_dir` on first use and from then on the
    user's: used as it is, never regenerated (images added there are picked up).
    ground_truth: a CSV `class,original,copy` of known duplicate pairs; empty means
    `<root>/ground_truth.csv` when that file exists.
    max_file_bytes: files larger than this are quarantined unread.
    verify: also compare every file's bytes with what its class's catalog read, so a file
    rewritten in place with the same size and modification time is noticed (`--verify`).
    include_hidden: read hidden entries (names starting with `.`) like any other; by
    default they are skipped and listed in the quarantine.
    splits: how the top folders are read (`core.data.splits.detect_splits`): "auto" (split
    folders recognised by name), "none", or the split folders' names, comma-separated.
    demo_splits: the demo's split variant (train/test with planted leaks) in `demo_dir`.
    """

    root: str = ""
    ground_truth: str = ""
    demo_dir: str = str(OutputLayout(Path(DEFAULT_OUTPUT)).demo_dataset)
    demo_seed: int = 0
    max_file_bytes: int = Field(default=DEFAULT_MAX_FILE_BYTES, ge=1)
    include_hidden: bool = False
    verify: bool = False
    splits: str = "auto"
    demo_splits: bool = False

    @property
    def is_demo(self) -> bool:
        return not self.root

    def resolve_root(self) -> Path:
        if self.root:
            root = Path(self.root).expanduser().resolve()
            if not root.is_dir():
                raise FileNotFoundError(f"image source {root} does not exist or is not a folder")
            return root
        return ensure_demo_dataset(
            Path(self.demo_dir), seed=self.demo_seed, splits=self.demo_splits
        )

    def split_layout(self) -> SplitLayout:
        """How the source is split (raises `SplitLayoutError` for a layout it refuses)."""
        return detect_splits(self.resolve_root(), self.splits, include_hidden=self.include_hidden)

    def list_source(
        self, against: OutputLayout | None = None
    ) -> tuple[FolderScan, dict[str, ClassListing]]:
        """The source's scan and class listings, as this source reads it (the one way
        the catalog, `dedup run`, the sensor and the schedule list it); with `verify` and
        `against` (the output), content-checked against its catalogs (`verify_listings`)."""
        root = self.resolve_root()
        key = (str(root), self.include_hidden, self.splits)
        taken = _SNAPSHOT.listings.get(key) if _SNAPSHOT.active else None
        if taken is None:
            scanned = _SNAPSHOT.scanned.get((str(root), self.include_hidden))
            taken = list_source(
                root, include_hidden=self.include_hidden, splits=self.splits, scanned=scanned
            )
            if _SNAPSHOT.active:
                _SNAPSHOT.listings[key] = taken
        scan, listings = taken[0], dict(taken[1])
        if self.verify and against is not None:
            listings = verify_listings(root, listings, against, self.max_file_bytes)
        return scan, listings

    def ground_truth_path(self) -> Path | None:
        if self.ground_truth:
            path = Path(self.ground_truth).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"ground truth file {path} does not exist")
            return path
        candidate = self.resolve_root() / GROUND_TRUTH_NAME
        return candidate if candidate.is_file() else None
