"""Why an image was scored as it was: the patches a ``patch-select`` model saw, and an occlusion map of the model
input (`dgs_sdk.occlusion`).

`explain_image` computes an `Explanation`; `write_explanation` writes its figures (`dgs_sdk.explain_figures`,
which needs matplotlib: ``pip install "dgs[report]"``) and ``explain.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .detector import FAKE, REAL, Detector, sigmoid
from .errors import DgsError
from .files import AtomicFile
from .image import ImageInput, ValueRange, describe_source, load_image
from .occlusion import Occlusion, OcclusionSettings, occlusion_map
from .package import ModelPackage
from .preprocess import PatchSelection, PreprocessSpec, crop_image, normalize, patch_selection

__all__ = [
    "JSON_NAME",
    "PATCHES_NAME",
    "OCCLUSION_NAME",
    "ExplainError",
    "Explanation",
    "explain_image",
    "check_output_folder",
    "write_explanation",
]

JSON_NAME = "explain.json"
# An earlier explain.json is read back only for the figures it lists; a larger one is not ours.
MAX_JSON_BYTES = 16 * 1024**2
PATCHES_NAME = "patches.png"
OCCLUSION_NAME = "occlusion.png"


class ExplainError(DgsError):
    """An explanation cannot be made or written: an output folder that cannot be used, matplotlib missing, or a
    threshold outside [0, 1]."""


@dataclass
class Explanation:
    """Why one image got its score.

    Attributes:
        source: the image's path, or ``<bytes>`` / ``<array>``.
        image_size: ``(width, height)`` of the decoded image.
        spec: the package's preprocessing.
        model_input: ``[S, S, 3]`` uint8: what the model saw (the centre crop, or the mosaic).
        logit: the model's output for ``model_input``.
        probability: probability that the image is generated.
        label: ``"fake"`` when ``probability >= threshold``, else ``"real"``.
        threshold: the threshold ``label`` was decided at.
        threshold_source: ``"given"``, or the package's (``"default"``, ``"calibrated"``).
        package: ``path``, ``precision``, ``file`` and ``sha256`` of the variant that ran.
        backend: ``name`` and ``device`` of the backend that ran it.
        occlusion: the occlusion map of ``model_input``.
        selection: for ``patch-select``, the patches in the mosaic and the image they were cut from; else None.
    """

    source: str
    image_size: tuple[int, int]
    spec: PreprocessSpec
    model_input: np.ndarray
    logit: float
    probability: float
    label: str
    threshold: float
    threshold_source: str
    package: dict[str, str]
    backend: dict[str, str]
    occlusion: Occlusion
    selection: PatchSelection | None = None

    def slot_means(self) -> np.ndarray:
        """``[K]``: for ``patch-select``, the occlusion map's mean over each filled tile of the mosaic, in slot
        order (what masking that patch costs the logit, roughly); empty for ``clip``."""
        if self.selection is None:
            return np.zeros(0)
        p, grid = self.selection.patch_size, self.selection.grid
        tiles = self.occlusion.heatmap.reshape(grid, p, grid, p).mean(axis=(1, 3)).ravel()  # [grid**2], row-major
        return tiles[: len(self.selection.indices)]

    def patches_dict(self) -> dict[str, Any] | None:
        """The selected patches for ``explain.json``: where each slot of the mosaic comes from."""
        selection = self.selection
        if selection is None:
            return None
        cut_h, cut_w = selection.image.shape[:2]
        width, height = self.image_size
        sx, sy = width / cut_w, height / cut_h  # 1 unless the image was resized before its patches were cut
        p = selection.patch_size
        selected = []
        for slot, ((top, left), low, entropy, drop) in enumerate(zip(
                selection.corners.tolist(), selection.low.tolist(), selection.entropy.tolist(),
                self.slot_means().tolist(), strict=True)):
            row = {"slot": slot, "x": left, "y": top, "kind": "low" if low else "high", "entropy": round(entropy, 6),
                   "occlusion_mean": drop}
            if selection.resized:
                row["box_in_image"] = [round(left * sx, 2), round(top * sy, 2), round((left + p) * sx, 2),
                                       round((top + p) * sy, 2)]
            selected.append(row)
        return {
            "coordinates": "x, y: top-left pixel of the patch in the image it was cut from" + (
                "; box_in_image: [x0, y0, x1, y1] in the original image" if selection.resized else ""),
            "occlusion_mean": "mean of the occlusion map over the patch's tile of the mosaic",
            "cut_from": {"width": cut_w, "height": cut_h, "resized": selection.resized},
            "patch_size": p,
            "grid": selection.grid,
            "patches_in_image": selection.rows * selection.columns,
            "black_slots": selection.grid**2 - len(selection.indices),
            "selected": selected,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything ``explain.json`` holds (see the README's ``dgs explain`` section)."""
        return {
            "image": {"path": self.source, "width": self.image_size[0], "height": self.image_size[1]},
            "package": self.package,
            "backend": self.backend["name"],
            "device": self.backend["device"],
            "preprocess": self.spec.to_dict(),
            "logit": self.logit,
            "probability": self.probability,
            "label": self.label,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "patches": self.patches_dict(),
            "occlusion": self.occlusion.to_dict(),
        }


def _detector(model: Detector | ModelPackage | str | os.PathLike) -> Detector:
    return model if isinstance(model, Detector) else Detector(model)


def explain_image(
    model: Detector | ModelPackage | str | os.PathLike,
    image: ImageInput,
    occlusion: OcclusionSettings | None = None,
    threshold: float | None = None,
    value_range: ValueRange | None = None,
    name: str | None = None,
) -> Explanation:
    """Score one image and explain the score: the patches the model saw (``patch-select``) and an occlusion map.

    Args:
        model: a `Detector` (its backend, device, variant and threshold are used), or a package path or
            `ModelPackage`, loaded with ``Detector``'s defaults.
        image: a path, encoded bytes or an RGB array, as `Detector.predict` takes.
        occlusion: window, stride and batch size of the occlusion map (`OcclusionSettings`' defaults if None).
        threshold: probability of "fake" from which the label is "fake" [default: the detector's].
        value_range: black and white of a float array (see `dgs_sdk.image.to_rgb8`).
        name: what to call the image in errors, figures and ``explain.json`` [default: its path, or ``<bytes>``,
            ``<array>``].

    Raises:
        UnreadableImage: the image cannot be decoded (the message names it).
        OcclusionError: bad occlusion settings, or a model output that is not a finite number.
        ExplainError: a threshold outside [0, 1].
    """
    settings = occlusion or OcclusionSettings()
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ExplainError(f"threshold must be a probability in [0, 1], got {threshold}")
    name = name or describe_source(image)
    rgb = load_image(image, name=name, value_range=value_range)
    detector = _detector(model)
    spec = detector.spec
    window, stride = settings.resolve(spec)
    selection = patch_selection(rgb, spec) if spec.transform == "patch-select" else None
    model_input = selection.mosaic() if selection is not None else crop_image(rgb, spec)
    x = normalize(model_input[None], spec)[0]  # [3, S, S]
    result = occlusion_map(detector.backend.run, x, window, stride, min(settings.batch_size, detector.batch_size),
                           name)
    probability = float(sigmoid(np.float64(result.logit)))
    used = detector.threshold if threshold is None else float(threshold)
    backend = detector.backend
    return Explanation(
        source=name,
        image_size=(rgb.shape[1], rgb.shape[0]),
        spec=spec,
        model_input=model_input,
        logit=result.logit,
        probability=probability,
        label=FAKE if probability >= used else REAL,
        threshold=used,
        threshold_source="given" if threshold is not None else detector.manifest.threshold_source,
        package={"path": os.fspath(detector.package.path), "precision": detector.precision,
                 "file": detector.manifest.variants[detector.precision].file, "sha256": backend.model_sha256},
        backend={"name": backend.name, "device": backend.device},
        occlusion=result,
        selection=selection,
    )


def _same_file(a: Path, b: str | os.PathLike | None) -> bool:
    try:
        return b is not None and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_folder(out_dir: str | os.PathLike, protected: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Check, without creating anything, that explanations can be written into ``out_dir``.

    Raises:
        ExplainError: ``out_dir``, or a folder on its way, is a file; or a file an explanation writes there is one
            of ``protected`` (the model package, the image).
    """
    out = Path(out_dir)
    existing = out
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if os.path.lexists(existing) and not existing.is_dir():
        where = "is a file" if existing == out else f"cannot be created: {existing} is a file"
        raise ExplainError(f"{out}: {where}, not a folder; give a folder to write the explanation to")
    for name in (JSON_NAME, PATCHES_NAME, OCCLUSION_NAME):
        for other in protected:
            if _same_file(out / name, other):
                raise ExplainError(f"{out}: writing {name} there would replace {os.fspath(other)}; choose another "
                                   "output folder")
    return out


def _remove_stale_figures(out: Path, writing: set[str]) -> None:
    """Remove figures an earlier explanation in ``out`` wrote and this one does not (``patches.png`` of a
    ``patch-select`` model, before a ``clip`` one): only those its ``explain.json`` lists."""
    try:
        with open(out / JSON_NAME, "rb") as f:
            earlier = json.loads(f.read(MAX_JSON_BYTES)).get("figures", [])
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(earlier, list):
        return
    for name in {PATCHES_NAME, OCCLUSION_NAME} - writing:
        if name in earlier and (out / name).is_file():
            (out / name).unlink()


def write_explanation(explanation: Explanation, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``patches.png`` (``patch-select`` only), ``occlusion.png`` and ``explain.json`` into ``out_dir``
    (created with its parents if missing).

    Each file is written under a temporary name and renamed into place, so an error leaves no half-written file.
    Files of an earlier explanation in ``out_dir`` are replaced (a figure it wrote that this one does not write is
    removed); the model package and the image never are.

    Returns:
        The paths written: the figures, then ``explain.json``.

    Raises:
        ExplainError: matplotlib is missing, or ``out_dir`` cannot be used (see `check_output_folder`).
    """
    from .explain_figures import draw_occlusion, draw_patches, require_matplotlib

    require_matplotlib()
    source = explanation.source if not explanation.source.startswith("<") else None
    out = check_output_folder(out_dir, (explanation.package["path"], source))
    out.mkdir(parents=True, exist_ok=True)
    figures = [(OCCLUSION_NAME, draw_occlusion)]
    if explanation.selection is not None:
        figures.insert(0, (PATCHES_NAME, draw_patches))
    _remove_stale_figures(out, {name for name, _ in figures})
    written = []
    for name, draw in figures:
        with AtomicFile(out / name) as f:
            draw(explanation, f.file)
        written.append(out / name)
    record = explanation.to_dict()
    record["figures"] = [path.name for path in written]
    with AtomicFile(out / JSON_NAME) as f:
        # ASCII with escapes: a file name that is not UTF-8 keeps its bytes as \udcXY escapes, as dgs scan's JSONL.
        f.file.write((json.dumps(record, indent=1) + "\n").encode("ascii"))
    written.append(out / JSON_NAME)
    return written
