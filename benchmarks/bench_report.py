"""How long `petclf report` takes on CPU, measured on synthetic data and extrapolated to the Pets validation set.

    .venv/bin/python -m benchmarks.bench_report                       # resnet34 at 224 px, 200 images, ~2 minutes
    .venv/bin/python -m benchmarks.bench_report --arch resnet18 --images 100 --workers 0 --out bench.json

The network has random weights (no hub access needed): speed does not depend on the weights. Images are 448 px
JPEGs (about the pixel count of a 500x375 Pets photo), preprocessed as training does (Resize(460) crop, 224 px).
Report time = fixed part (loading, Grad-CAM, figures, HTML) + images / (images per second of the prediction pass).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

PETS_VALID = 1478  # images in the fastbook validation split of Oxford-IIIT Pets (20% of 7,390)


def make_run(tmp: Path, arch: str, n_images: int, size: int, presize: int) -> Path:
    """A 37-breed synthetic data folder and a random-weight bundle whose run split names `n_images` for validation."""
    from petclf.bundle import make_manifest, write_bundle
    from petclf.config import TrainConfig, save_config
    from petclf.model import FASTAI_HEAD, build_model, norm_stats
    from petclf.synth import synth_pets

    per_class = -(-(n_images + 37) // 37)  # enough for the split plus at least one training image per class
    synth_pets(tmp / "data", n_classes=37, per_class=per_class, size=448, seed=0)
    names = sorted(p.name for p in (tmp / "data").glob("*.jpg"))[::-1]
    split = tmp / "valid.txt"
    split.write_text("\n".join(names[:n_images]) + "\n")
    vocab = sorted({n.rsplit("_", 1)[0] for n in names})
    mean, std = norm_stats(arch)
    run = tmp / "run"
    write_bundle(build_model(arch, len(vocab)), run, make_manifest(arch, FASTAI_HEAD, vocab, size, presize, mean, std))
    save_config(TrainConfig(data=str(tmp / "data"), arch=arch, split=str(split), size=size, presize=presize),
                run / "config.yaml")
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet34")
    ap.add_argument("--images", type=int, default=200, help="validation images to time the report on")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--presize", type=int, default=460)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: fastai's, as the CLI)")
    ap.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = ap.parse_args()

    import torch

    from petclf.data import load_data
    from petclf.report import write_report

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.environ["PETCLF_CACHE_DIR"] = str(tmp / "cache")
        run = make_run(tmp, args.arch, args.images, args.size, args.presize)
        t0 = time.perf_counter()
        load_data(tmp / "data")  # verifying every image once; later runs read the verdicts from the cache
        verify = time.perf_counter() - t0
        t0 = time.perf_counter()
        paths = write_report(run, bs=args.bs, workers=args.workers, out=tmp / "report")
        total = time.perf_counter() - t0
        report = json.loads(paths["json"].read_text())
        html_mb = paths["html"].stat().st_size / 2**20
    timing = report["timing"]
    fixed = total - timing["inference_seconds"]
    ips = timing["images_per_second"]
    result = {"arch": args.arch, "size": args.size, "images": timing["images"], "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "workers": args.workers, "verify_seconds_cold": round(verify, 1),
              "report_seconds": round(total, 1), "inference_seconds": round(timing["inference_seconds"], 1),
              "images_per_second": round(ips, 1), "fixed_seconds": round(fixed, 1), "html_mb": round(html_mb, 2),
              "pets_valid_estimate_seconds": round(fixed + PETS_VALID / ips, 0)}
    print(json.dumps(result, indent=1))
    print(f"estimated report time over the {PETS_VALID:,} Pets validation images: "
          f"{result['pets_valid_estimate_seconds'] / 60:.1f} min ({fixed:.0f} s fixed + {PETS_VALID} / {ips:.1f} "
          f"images/s), plus the one-off verification of 7,390 images when not cached")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
