"""Build a model package from an untrained tiny detector and scan a folder of photographs with `dgs scan`.

This shows the SDK's pipeline end to end (decoding, DGS-Net's patch-select preprocessing, the `.dgs`
package, ONNX Runtime, the scan report with its error rows). The model has random weights, so its verdicts
mean nothing: training comes with `dgs train`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from dgs_export import export_package
from dgs_sdk import PreprocessSpec
from dgs_trainer import build_image_detector
from dgs_trainer.samples import sample_photos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("demo"))
    args = parser.parse_args()
    images = args.workdir / "images"
    shutil.rmtree(images, ignore_errors=True)
    (images / "nested").mkdir(parents=True)

    photos = sample_photos()
    for i, (name, rgb) in enumerate(photos.items()):
        folder = images / "nested" if i % 2 else images
        cv2.imwrite(str(folder / f"{name}.{'png' if i % 3 == 0 else 'jpg'}"), np.ascontiguousarray(rgb[:, :, ::-1]))
    (images / "truncated.jpg").write_bytes((images / "nested" / "coffee.jpg").read_bytes()[:5000])
    (images / "not-an-image.png").write_text("<html>a web page saved as .png</html>")

    torch.manual_seed(0)
    model = build_image_detector("dgs-tiny-vit", pretrained="none")
    package = export_package(
        model,
        args.workdir / "model.dgs",
        PreprocessSpec.patch_select(),
        list(photos.values()),
        architecture={"arch": "dgs-tiny-vit", "head": "linear"},
        provenance={"method": "untrained (random weights): a pipeline demo, not a detector"},
    )
    print(f"wrote {package} (untrained dgs-tiny-vit, patch-select preprocessing)")
    out = args.workdir / "scan.csv"
    dgs = [sys.executable, "-m", "dgs_sdk.cli"]
    code = subprocess.call([*dgs, "scan", str(images), "--model", str(package), "--out", str(out)])
    print(out.read_text())
    print(f"dgs scan exited with {code}: 1 means some files could not be scored (their rows say why)")
    return 0 if code in (0, 1) else code


if __name__ == "__main__":
    sys.exit(main())
