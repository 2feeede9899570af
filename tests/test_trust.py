"""The trust battery: what the user asks for is what runs, exact copies always go, odd
input never breaks a run, nothing is lost. Every case goes through the real `dedup`
command, as a user meets it (tiny data, --epochs 1)."""

import contextlib
import csv
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import run_dedup, tree_digest
from PIL import Image

from dedup_assets.core.data.artifacts import read_catalog
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.quality.demo_data import generate_demo_dataset

CJK_CLASS = "森林" * 15  # 30 characters, 90 bytes: percent-encoded it would be 270
LATIN1_CLASS = b"caf\xe9"  # not UTF-8
ODD_NAMES = ['a, b "quoted".png', "new\nline.png", "-dash.png", "100%.png", "sp ace.png"]
FAST = ("--epochs", "1", "--device", "cpu", "--precision", "fp32")


def _image(seed: int) -> Image.Image:
    """A distinct 64x64 picture: smooth random structure, different for every seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC)


def _save(path, seed: int) -> None:
    _image(seed).save(path, format="PNG")


def build_nasty_source(root: Path) -> None:
    """A demo dataset plus every kind of input that broke a run or was silently lost."""
    generate_demo_dataset(root, seed=11, per_class=14, duplicate_fraction=0.2)
    rows = list(csv.reader((root / "ground_truth.csv").open()))
    with (root / "ground_truth.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", "original", "copy", "transform"])
        for r in rows[1:]:
            writer.writerow([*r, r[2].rsplit("__dup_", 1)[-1].split(".")[0]])
    seed = 1000
    many = root / "many_copies"
    many.mkdir()
    for i in range(12):
        _save(many / f"distinct_{i:02d}.png", seed := seed + 1)
    for i in range(500):
        shutil.copyfile(many / "distinct_00.png", many / f"copy_{i:03d}.png")
    only_copies = root / "copies15"
    only_copies.mkdir()
    _save(only_copies / "c00.png", seed := seed + 1)
    for i in range(1, 15):
        shutil.copyfile(only_copies / "c00.png", only_copies / f"c{i:02d}.png")
    (root / "one").mkdir()
    _save(root / "one" / "only.png", seed := seed + 1)
    (root / "pair").mkdir()
    _save(root / "pair" / "p1.png", seed := seed + 1)
    shutil.copyfile(root / "pair" / "p1.png", root / "pair" / "p2.png")
    (root / "five").mkdir()
    for i in range(5):
        _save(root / "five" / f"f{i}.png", seed := seed + 1)
    (root / "empty").mkdir()
    (root / "only_broken").mkdir()
    (root / "only_broken" / "bad.png").write_bytes(b"\x89PNG not really")
    (root / CJK_CLASS).mkdir()
    for i in range(3):
        _save(root / CJK_CLASS / f"画像{i}.png", seed := seed + 1)
    latin = os.path.join(os.fsencode(root), LATIN1_CLASS)
    os.mkdir(latin)
    _image(seed := seed + 1).save(
        os.path.join(latin, b"img\xff.png").decode("utf-8", "surrogateescape")
    )
    _image(seed := seed + 1).save(os.path.join(latin, b"b.png").decode("utf-8", "surrogateescape"))
    for name in ODD_NAMES:
        _save(root / "forest" / name, seed := seed + 1)
    frames = [_image(seed + k) for k in range(3)]
    frames[0].save(root / "forest" / "anim.gif", save_all=True, append_images=frames[1:])
    (root / "forest" / "notes.txt").write_text("not an image")
    _save(root / "root_image.png", seed := seed + 10)
    os.mkfifo(root / "water" / "pipe.jpg")
    (root / "water" / "zero.png").symlink_to("/dev/zero")
    (root / "water" / "gone.png").symlink_to(root / "water" / "nowhere.png")


@pytest.fixture(scope="module")
def nasty(tmp_path_factory):
    base = tmp_path_factory.mktemp("nasty")
    # Folders named like glob patterns: every table is read as a path, not a pattern.
    source, output = base / "source [a]", base / "out [1] *"
    build_nasty_source(source)
    before = tree_digest(source)
    done = run_dedup(
        "run", "--source", str(source), "--output", str(output), "--thresholds", "0.9,0.99", *FAST
    )
    return {"source": source, "output": output, "before": before, "done": done}


def _keep(output: Path, t: str) -> pl.DataFrame:
    return pl.read_parquet(output / "keep_lists" / f"{t}.parquet", glob=False)


def test_nasty_folder_runs_to_the_end(nasty):
    done = nasty["done"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "ERROR" not in done.stdout and "SKIPPED" not in done.stdout
    assert "report:" in done.stdout


def test_thresholds_flag_writes_exactly_those_keep_lists(nasty):
    out = nasty["output"]
    assert sorted(p.name for p in (out / "keep_lists").glob("*.parquet")) == [
        "0.9.parquet",
        "0.99.parquet",
    ]
    assert sorted(p.name for p in (out / "clean").iterdir()) == ["0.9", "0.99"]
    assert sorted(p.name for p in (out / "reports").iterdir() if p.is_dir()) == ["0.9", "0.99"]
    saved = json.loads((out / "pipeline.json").read_text())
    assert saved["thresholds"] == ["0.9", "0.99"]
    assert "device" not in saved and "precision" not in saved


@pytest.mark.parametrize("t", ["0.9", "0.99"])
def test_500_and_15_exact_copies_leave_one(nasty, t):
    keep = _keep(nasty["output"], t)
    many = keep.filter(
        (pl.col("class") == "many_copies")
        & (pl.col("path").str.contains("copy_") | pl.col("path").str.ends_with("distinct_00.png"))
    )
    assert many.height == 501
    assert many["kept"].sum() == 1
    kept_id = many.filter(pl.col("kept"))["image_id"][0]
    gone = many.filter(~pl.col("kept"))
    assert (gone["duplicate_of"] == kept_id).all()
    assert (gone["similarity"] == 1.0).all() and (gone["match"] == "exact").all()
    fifteen = keep.filter(pl.col("class") == "copies15")
    assert fifteen.height == 15 and fifteen["kept"].sum() == 1
    pair = keep.filter(pl.col("class") == "pair")
    assert pair["kept"].to_list().count(True) == 1


def test_small_classes_get_keep_lists_and_a_report_line(nasty):
    out = nasty["output"]
    keep = _keep(out, "0.9")
    sizes = dict(keep.group_by("class").len().iter_rows())
    assert sizes["one"] == 1 and sizes["pair"] == 2 and sizes["five"] == 5
    assert keep.filter(pl.col("class") == "one")["kept"].to_list() == [True]
    report = (out / "reports" / "0.9" / "report.md").read_text()
    section = report.split("## Classes without statistics", 1)[1]
    for name in ("one", "pair", "five", "copies15"):
        assert f"- {name}: " in section and "statistics need at least 12" in section
    assert "- empty: no readable image" in section
    assert "- only_broken: no readable image" in section
    summary = json.loads((out / "reports" / "0.9" / "summary.json").read_text())
    assert set(summary["classes_not_measured"]) >= {"one", "pair", "five", "copies15"}
    assert "forest" not in summary["classes_not_measured"]
    # The last screen says how many classes were decided without a fit, as their rows do.
    spaces = keep.group_by("class").agg(pl.col("space").unique())
    assert (spaces["space"].list.len() == 1).all()  # one space a class
    unfitted = spaces.filter(pl.col("space").list.first() != "spline_copula_dct")
    assert {"one", "pair", "five"} <= set(unfitted["class"])  # under 32 images
    images = keep.filter(pl.col("class").is_in(unfitted["class"].implode())).height
    whole = "all" if unfitted.height == spaces.height else f"{unfitted.height} of"
    line = (
        f"space: {whole} {spaces.height} classes ({images} images) were decided "
        "without a fit, not in spline_copula_dct: "
    )
    assert nasty["done"].stdout.count(line) == 2  # once for each threshold


def test_every_skipped_path_is_listed_with_its_reason(nasty):
    q = pl.read_csv(nasty["output"] / "catalog" / "quarantine.csv", glob=False)
    reasons = dict(zip(q["path"], q["reason"], strict=True))
    actions = dict(zip(q["path"], q["action"], strict=True))
    assert "FIFO" in reasons["water/pipe.jpg"]
    assert "character device" in reasons["water/zero.png"]
    assert "broken symbolic link" in reasons["water/gone.png"]
    assert "not in a class folder" in reasons["root_image.png"]
    assert "'.txt' is not an image extension" in reasons["forest/notes.txt"]
    assert "not a readable image" in reasons["only_broken/bad.png"]
    assert "not a readable image" in reasons["urban/broken.png"]
    assert actions["forest/anim.gif"] == "used"
    assert reasons["forest/anim.gif"] == "animated image (3 frames): the first frame was used"
    assert all(actions[p] == "skipped" for p in reasons if p != "forest/anim.gif")


def test_odd_names_are_catalogued_losslessly_and_copied(nasty):
    out = nasty["output"]
    catalog = read_catalog(OutputLayout(out))
    raw = set(catalog["raw_path"].to_list())
    assert b"caf\xe9/img\xff.png" in raw
    assert "caf\\xe9/img\\xff.png" in catalog["path"].to_list()
    for name in ODD_NAMES:
        assert f"forest/{name}".encode() in raw
    keys = catalog.filter(pl.col("class") == CJK_CLASS)["class_key"].unique().to_list()
    assert len(keys) == 1 and len(keys[0]) <= 64
    clean = os.fsencode(out / "clean" / "0.99")
    assert os.path.isfile(os.path.join(clean, b"caf\xe9/img\xff.png"))
    for name in ODD_NAMES:
        assert (out / "clean" / "0.99" / "forest" / name).is_file()
    assert len(list((out / "clean" / "0.99" / CJK_CLASS).iterdir())) == 3
    csv_rows = pl.read_csv(out / "keep_lists" / "0.99.csv", glob=False)
    assert "forest/new\nline.png" in csv_rows["path"].to_list()


def test_source_is_never_modified(nasty):
    assert tree_digest(nasty["source"]) == nasty["before"]


def test_ground_truth_with_extra_columns_is_scored(nasty):
    table = pl.read_csv(nasty["output"] / "evaluation" / "evaluation.csv", glob=False)
    assert set(table["method"]) == {
        "raw",
        "whitened",
        "spline_copula",
        "spline_copula_dct",
        "dct",
        "phash",
        "pdq",
    }
    assert table["average_precision"].is_between(0, 1).all()


# ------------------------------------------------------------------ the same in dagster dev

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    import urllib.request

    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["data"]


@pytest.fixture(scope="module")
def ui(nasty):
    """`dedup ui` on the output of `dedup run --thresholds 0.9,0.99`, on a free port."""
    import socket
    import subprocess
    import time
    import urllib.request

    from conftest import DEDUP

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEDUP_", "DAGSTER_"))}
    proc = subprocess.Popen(
        [str(DEDUP), "ui", "--output", str(nasty["output"]), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    try:
        while True:
            assert proc.poll() is None, "dedup ui exited"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the Dagster UI did not start"
                time.sleep(0.5)
        yield {"port": port, "output": nasty["output"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_dedup_ui_on_that_folder_has_exactly_those_thresholds(ui):
    """The UI's partitions are the run's thresholds, and a keep list materialized from the
    UI lands where the CLI's did, with no other threshold appearing."""
    import time

    port, out = ui["port"], ui["output"]
    nodes = _graphql(port, "{ assetNodes { assetKey { path } partitionKeys } }")["assetNodes"]
    keys = {n["assetKey"]["path"][0]: n["partitionKeys"] for n in nodes}
    for name in ("keep_list", "kurtosis_report", "clean_dataset"):
        assert keys[name] == ["0.9", "0.99"]
    assert "many_copies" in keys["class_keep_lists"]
    location = _graphql(
        port, "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"
    )["workspaceOrError"]["locationEntries"][0]["name"]
    (out / "keep_lists" / "0.9.parquet").unlink()
    params = {
        "selector": {
            "repositoryLocationName": location,
            "repositoryName": "__repository__",
            "jobName": "threshold_job",
            "assetSelection": [{"path": ["keep_list"]}],
        },
        "mode": "default",
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "0.9"}]},
    }
    launched = _graphql(port, LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    status_query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
    deadline = time.monotonic() + 300
    while True:
        status = _graphql(port, status_query, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        assert time.monotonic() < deadline, f"run still {status}"
        time.sleep(1)
    assert status == "SUCCESS"
    assert sorted(p.name for p in (out / "keep_lists").glob("*.parquet")) == [
        "0.9.parquet",
        "0.99.parquet",
    ]
    assert _keep(out, "0.9").height > 0


def test_dedup_runs_are_listed_on_their_jobs_pages(ui):
    """`dedup ui` loads the code location workspace.yaml names, and the runs `dedup run`
    made (in process, no code location origin) are on their jobs' pages: the query of a
    job's Runs tab and of the latest run in the Jobs list."""
    port = ui["port"]
    location = _graphql(
        port, "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"
    )["workspaceOrError"]["locationEntries"][0]["name"]
    assert location == "latent_dedup"
    query = """query($params: PipelineSelector!) { pipelineOrError(params: $params) {
        __typename ... on Pipeline { runs { runId status } } } }"""
    for job in ("index_job", "ingest_job", "train_job", "class_job", "threshold_job"):
        params = {
            "repositoryLocationName": location,
            "repositoryName": "__repository__",
            "pipelineName": job,
        }
        found = _graphql(port, query, {"params": params})["pipelineOrError"]
        assert found["__typename"] == "Pipeline", found
        assert found["runs"] and found["runs"][0]["status"] == "SUCCESS", (job, found)


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def test_the_ui_shows_the_graph_checks_plots_and_automation(ui, tmp_path_factory):
    """What a user opens in the browser, in headless Chromium: the asset graph, a keep list
    partition with its checks, a report plot and the Automation page; screenshots saved."""
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it with apt-get)")
    shots = Path(os.environ.get("DEDUP_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{ui['port']}"
    pages = [
        ("lineage", "/asset-groups", ["deduplication", "reports", "ingest"]),
        ("keep_list_checks", "/assets/keep_list?view=checks", ["keep_list_integrity"]),
        ("keep_list_partitions", "/assets/keep_list?view=partitions", ["0.9", "0.99"]),
        ("kurtosis_gate", "/assets/kurtosis_report?view=checks", ["kurtosis_reduction"]),
        ("kurtosis_report_plot", "/assets/kurtosis_report", ["pc1_figure"]),
        (
            "automation",
            "/automation",
            ["new_images_sensor", "nightly_refresh", "nightly_retraining", "dedup_automation"],
        ),
    ]

    def dismiss_welcome(page, first: bool) -> None:
        """Dagster's first-visit 'join the community' dialog covers the page once: waited
        for on the first page, clicked at once should a later page show it."""
        skip = page.get_by_role("button", name="Skip")
        if first:
            with contextlib.suppress(playwright.TimeoutError):
                skip.click(timeout=4_000)
        elif skip.count():
            skip.first.click()

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        for at, (name, path, texts) in enumerate(pages):
            page.goto(base + path, timeout=120_000)
            for text in texts:
                page.get_by_text(text, exact=True).first.wait_for(timeout=90_000)
            dismiss_welcome(page, first=at == 0)
            if name == "kurtosis_report_plot":  # the report's figures are in its metadata
                row = page.locator("tr", has_text="pc1_figure")
                row.get_by_text("[Show Markdown]").first.click()
                figure = page.locator("img[src^='data:image/svg+xml']").first
                figure.wait_for(timeout=90_000)  # an SVG figure (`svg_figure`), drawn:
                page.wait_for_function(
                    "img => img.complete && img.naturalWidth > 0", arg=figure.element_handle()
                )
            page.wait_for_timeout(1500)
            page.screenshot(path=str(shots / f"{name}.png"))
        browser.close()
    saved = sorted(p.name for p in shots.glob("*.png"))
    assert saved == sorted(f"{name}.png" for name, _, _ in pages)
    print(f"screenshots: {shots}")
