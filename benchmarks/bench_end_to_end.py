"""End to end: deduplicating a dataset with a trained model, against imagededup's pHash.

Ours, per stage, with the numerical core the assets run (no orchestration overhead):
decode every file, encode with a trained autoencoder, fit each class's density model,
and decide the keep list at one threshold (`class_decision.decide_class`: exact copies
first, then the greedy keep, as the pipeline does). imagededup (PHash.find_duplicates, class by
class, as a user would run it on class folders) runs in its own virtual environment, in a
subprocess of this same benchmark, on the same files.

    python benchmarks/bench_end_to_end.py --source DIR --model autoencoder.pt \
        [--imagededup-python /path/to/venv/bin/python] [--threshold 0.95] [--space spline_copula]
        [--policy density] [--components 64] [--out DIR]

Without --imagededup-python only our side runs (no comparison).

imagededup needs torchvision; install it beside the project, not into it:
    python3.11 -m venv /tmp/idd && /tmp/idd/bin/pip install torch==2.14.1 torchvision==0.29.1 imagededup
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, write_result  # noqa: E402
from dedup_assets.core.data.image_folder import read_and_decode, scan_image_folder  # noqa: E402
from dedup_assets.core.decision.class_decision import (  # noqa: E402
    VECTORISERS,
    ClassData,
    decide_class,
    needs_pixels,
)
from dedup_assets.core.decision.keep_policy import KEEP_POLICIES  # noqa: E402
from dedup_assets.core.density.class_density import fit_class_density  # noqa: E402
from dedup_assets.core.model.autoencoder import cpu_supports_bf16, encode_images, load_state  # noqa: E402

IMAGEDEDUP_SCRIPT = r"""
import json, sys, time, logging
logging.disable(logging.WARNING)
from pathlib import Path
# imagededup 0.3.3 builds its CNN method's MobileNetV3 with ImageNet weights when its
# `methods` package is imported, a download; PHash never uses it, so it is built without.
import torchvision.models as _models
_mobilenet = _models.mobilenet_v3_small
_models.mobilenet_v3_small = lambda *args, **kwargs: _mobilenet()
from imagededup.methods import PHash
root, max_distance = Path(sys.argv[1]), int(sys.argv[2])
hasher = PHash(verbose=False)
out = {"encode_seconds": 0.0, "search_seconds": 0.0, "images": 0, "images_with_duplicates": 0}
for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
    t = time.perf_counter()
    encodings = hasher.encode_images(image_dir=str(class_dir))
    out["encode_seconds"] += time.perf_counter() - t
    t = time.perf_counter()
    dups = hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=max_distance)
    out["search_seconds"] += time.perf_counter() - t
    out["images"] += len(encodings)
    out["images_with_duplicates"] += sum(1 for v in dups.values() if v)
print(json.dumps(out))
"""


def ours(
    source: Path,
    model_path: Path,
    threshold: float,
    *,
    space: str,
    policy: str,
    components: int,
    device: str,
) -> dict:
    stages: dict[str, float] = {}
    t = time.perf_counter()
    files = scan_image_folder(source).files
    decoded = read_and_decode(source, files)
    ok = [i for i, d in enumerate(decoded) if d.pixels is not None]
    pixels = np.stack([decoded[i].pixels for i in ok])
    classes = np.array([files[i].class_key for i in ok])
    ids = np.array([decoded[i].content_hash for i in ok])
    pixel_hashes = np.array([decoded[i].pixel_hash for i in ok])
    stages["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    model = load_state(model_path, device)
    bf16 = torch.cuda.is_bf16_supported() if device.startswith("cuda") else cpu_supports_bf16()
    latents = encode_images(
        model, pixels, device=device, amp_dtype=torch.bfloat16 if bf16 else None
    )
    stages["encode"] = time.perf_counter() - t
    fit_s = join_s = 0.0
    kept = exact = 0
    for key in sorted(set(classes)):
        sel = classes == key
        t = time.perf_counter()
        density = fit_class_density(latents[sel], components)
        fit_s += time.perf_counter() - t
        data = ClassData(
            ids[sel],
            pixel_hashes[sel],
            latents[sel],
            density,
            pixels[sel] if needs_pixels(density, space) else None,
        )
        t = time.perf_counter()
        (decision,) = decide_class(data, [threshold], space=space, policy=policy)
        join_s += time.perf_counter() - t
        kept += decision.n_kept
        exact += int(decision.exact.sum())
    stages["density fit"] = fit_s
    stages["join + keep"] = join_s
    return {
        "images": len(ok),
        "kept": kept,
        "exact_copies_removed": exact,
        "space": space,
        "policy": policy,
        "components": components,
        "stages": stages,
        "total_seconds": sum(stages.values()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", required=True, type=Path)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--imagededup-python", default=None)
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--space", default="spline_copula", choices=list(VECTORISERS))
    p.add_argument("--policy", default="density", choices=list(KEEP_POLICIES))
    p.add_argument(
        "--components",
        type=int,
        default=64,
        help="principal components per class (64: the committed figures; the pipeline uses 128)",
    )
    p.add_argument("--max-distance", type=int, default=10, help="imagededup's Hamming threshold")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_out_option(p)
    args = p.parse_args()
    result = {
        "ours": ours(
            args.source,
            args.model,
            args.threshold,
            space=args.space,
            policy=args.policy,
            components=args.components,
            device=args.device,
        )
    }
    n = result["ours"]["images"]
    rows = [[f"latent-dedup: {k}", v, v / n * 1e3] for k, v in result["ours"]["stages"].items()]
    rows.append(
        [
            "latent-dedup: total",
            result["ours"]["total_seconds"],
            result["ours"]["total_seconds"] / n * 1e3,
        ]
    )
    if args.imagededup_python:
        proc = subprocess.run(
            [
                args.imagededup_python,
                "-c",
                IMAGEDEDUP_SCRIPT,
                str(args.source),
                str(args.max_distance),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            sys.exit(f"imagededup failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        idd = json.loads(proc.stdout.strip().splitlines()[-1])
        idd["total_seconds"] = idd["encode_seconds"] + idd["search_seconds"]
        result["imagededup_phash"] = idd
        rows += [
            [
                "imagededup pHash: hashing",
                idd["encode_seconds"],
                idd["encode_seconds"] / idd["images"] * 1e3,
            ],
            [
                "imagededup pHash: search",
                idd["search_seconds"],
                idd["search_seconds"] / idd["images"] * 1e3,
            ],
            [
                "imagededup pHash: total",
                idd["total_seconds"],
                idd["total_seconds"] / idd["images"] * 1e3,
            ],
        ]
        result["speedup_per_image"] = (idd["total_seconds"] / idd["images"]) / (
            result["ours"]["total_seconds"] / n
        )
    print(table(["stage", "seconds", "ms/image"], rows))
    if "speedup_per_image" in result:
        print(f"latent-dedup is {result['speedup_per_image']:.2f}x imagededup's pHash per image")
    payload = {"source": str(args.source), "threshold": args.threshold, **result}
    print(f"-> {write_result(f'end_to_end_{args.device}', payload, args.out)}")


if __name__ == "__main__":
    main()
