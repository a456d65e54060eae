"""The figures of `dgs explain`, drawn with matplotlib (the ``report`` extra), imported only when one is drawn.

Figures are drawn on matplotlib's `Figure` directly, not through pyplot: nothing global changes in a program
that calls `dgs_sdk.explain.write_explanation`, and nothing is kept once a figure is written. However large the
image, it is drawn downscaled to at most `DISPLAY_SIDE` pixels, so a figure costs the same memory and time for
an 8000 x 6000 photograph as for a small one; its axes still count pixels of the full image.
"""

from __future__ import annotations

import os
import warnings
from typing import IO, TYPE_CHECKING

import cv2
import numpy as np

from . import figures
from .explain import ExplainError, Explanation
from .figures import figure_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["DISPLAY_SIDE", "require_matplotlib", "draw_patches", "draw_occlusion"]

DISPLAY_SIDE = 1600
DPI = 100
# Okabe-Ito colours: told apart with the common colour-vision deficiencies, and visible on photographs.
LOW_COLOUR = "#56B4E9"
HIGH_COLOUR = "#E69F00"
BOTH_COLOUR = "#CC79A7"
PAD_COLOUR = "#888888"
# A patch under this fraction of the image's longer side is a speck once drawn; it gets a dot of fixed size too.
SMALL_PATCH_FRACTION = 80


def require_matplotlib() -> None:
    """Raise `ExplainError` naming the extra to install when matplotlib cannot be imported."""
    figures.require_matplotlib("the figures of dgs explain", ExplainError)


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(figure: Figure, file: IO[bytes]) -> None:
    with warnings.catch_warnings():
        # A file name in a script the font lacks (CJK, for one) is drawn with boxes; the JSON has the name.
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        figure.savefig(file, format="png", dpi=DPI)


def _short_name(source: str, limit: int = 60) -> str:
    name = source if source.startswith("<") else os.path.basename(source) or source
    return figure_text(name if len(name) <= limit else name[: limit - 1] + "…")


def _verdict(explanation: Explanation) -> str:
    """One line: the probability, logit, label and threshold."""
    e = explanation
    return (f"P(fake) = {e.probability:.3f} (logit {e.logit:+.3f}): {e.label.upper()} at threshold "
            f"{e.threshold:.3g} ({e.threshold_source})")


def _title(figure: Figure, explanation: Explanation, what: str) -> None:
    figure.suptitle(f"{_short_name(explanation.source)}: {what}\n{_verdict(explanation)}", fontsize=13)


def _display(image: np.ndarray) -> np.ndarray:
    """The image downscaled (area-averaged) so its longer side is at most `DISPLAY_SIDE`."""
    h, w = image.shape[:2]
    scale = DISPLAY_SIDE / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _square(axes: Axes, left: float, top: float, side: float, colour: str, fill: bool = True,
            width: float = 1.5, **kwargs) -> None:
    from matplotlib.patches import Rectangle

    # A translucent fill keeps small patches visible on a large image; the edge stays opaque.
    face = (*_rgb(colour), 0.25) if fill else "none"
    axes.add_patch(Rectangle((left, top), side, side, edgecolor=colour, linewidth=width, facecolor=face, **kwargs))


def _rgb(colour: str) -> tuple[float, float, float]:
    return tuple(int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))


def draw_patches(explanation: Explanation, file: IO[bytes]) -> None:
    """``patches.png``: the selected patches outlined on the image they were cut from, and the mosaic."""
    from matplotlib.patches import Patch

    selection = explanation.selection
    if selection is None:
        raise ExplainError(f"{explanation.source}: patches are drawn for patch-select models only")
    p, grid = selection.patch_size, selection.grid
    cut_h, cut_w = selection.image.shape[:2]
    figure = _new_figure(16, 8.5)
    image_axes, mosaic_axes = figure.subplots(1, 2, width_ratios=[1.6, 1])
    _title(figure, explanation, "the patches the model saw")

    image_axes.imshow(_display(selection.image), extent=(0, cut_w, cut_h, 0), interpolation="antialiased")
    kinds: dict[int, set[bool]] = {}
    for index, low in zip(selection.indices.tolist(), selection.low.tolist(), strict=True):
        kinds.setdefault(index, set()).add(low)
    colour_of = {frozenset({True}): LOW_COLOUR, frozenset({False}): HIGH_COLOUR, frozenset({True, False}): BOTH_COLOUR}
    for index, picked in kinds.items():
        top, left = divmod(index, selection.columns)
        _square(image_axes, left * p, top * p, p, colour_of[frozenset(picked)])
    where = f"{len(kinds)} patches of {p}×{p} px, outlined on the {cut_w}×{cut_h} image"
    if selection.resized:
        width, height = explanation.image_size
        where = (f"{len(kinds)} patches of {p}×{p} px, outlined on the image resized from {width}×{height} to "
                 f"{cut_w}×{cut_h}\n(it has fewer than {grid * grid} patches; the patches were cut from this resize)")
    image_axes.set_title(where, fontsize=11)
    image_axes.set_xlabel("x (pixels)")
    image_axes.set_ylabel("y (pixels)")

    mosaic_axes.imshow(explanation.model_input, interpolation="nearest")
    for slot in range(grid * grid):
        row, column = divmod(slot, grid)
        if slot < len(selection.indices):
            index = int(selection.indices[slot])
            colour = colour_of[frozenset(kinds[index])] if len(kinds[index]) > 1 else (
                LOW_COLOUR if selection.low[slot] else HIGH_COLOUR)
            _square(mosaic_axes, column * p - 0.5, row * p - 0.5, p, colour, fill=False, width=1.2)
        else:
            _square(mosaic_axes, column * p - 0.5, row * p - 0.5, p, PAD_COLOUR, fill=False, width=0.8, hatch="//")
    mosaic_axes.set_title(f"What the model saw: the {grid}×{grid} mosaic ({explanation.spec.size}×"
                          f"{explanation.spec.size} px)\nlowest entropy first, row by row", fontsize=11)
    mosaic_axes.set_xticks([])
    mosaic_axes.set_yticks([])

    counts = {colour: 0 for colour in (LOW_COLOUR, HIGH_COLOUR, BOTH_COLOUR)}
    for picked in kinds.values():
        counts[colour_of[frozenset(picked)]] += 1
    labels = {
        LOW_COLOUR: "lowest spectral entropy (smooth, flat areas)",
        HIGH_COLOUR: "highest spectral entropy (texture, edges, noise)",
        BOTH_COLOUR: "among both the lowest and the highest (too few patches: each fills two tiles)",
    }
    handles = [Patch(facecolor=(*_rgb(colour), 0.25), edgecolor=colour, label=f"{count} {labels[colour]}")
               for colour, count in counts.items() if count]
    black = grid * grid - len(selection.indices)
    if black:
        handles.append(Patch(facecolor="black", edgecolor=PAD_COLOUR, hatch="//",
                             label=f"{black} black tiles: padding (only {selection.rows * selection.columns} patches)"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(2, len(handles)), fontsize=11,
                  frameon=False)
    _save(figure, file)


def _patch_values(axes: Axes, explanation: Explanation, cmap, norm) -> None:
    """The selected patches on the image they were cut from, each filled with its tile's mean occlusion value."""
    from matplotlib.patches import Rectangle

    selection = explanation.selection
    p = selection.patch_size
    cut_h, cut_w = selection.image.shape[:2]
    axes.imshow(_display(selection.image), extent=(0, cut_w, cut_h, 0), interpolation="antialiased")
    values: dict[int, list[float]] = {}
    for index, value in zip(selection.indices.tolist(), explanation.slot_means().tolist(), strict=True):
        values.setdefault(index, []).append(value)
    centres, colours = [], []
    for index, taken in values.items():  # a patch in two slots ("pad") shows the mean of both
        top, left = divmod(index, selection.columns)
        colour = (*cmap(norm(float(np.mean(taken))))[:3], 0.8)
        axes.add_patch(Rectangle((left * p, top * p), p, p, facecolor=colour, edgecolor="black", linewidth=0.6))
        centres.append(((left + 0.5) * p, (top + 0.5) * p))
        colours.append(colour)
    resized = f", resized to {cut_w}×{cut_h}" if selection.resized else ""
    title = f"The same values on the image{resized}:\neach patch filled with the mean over its tile"
    if p < max(cut_w, cut_h) / SMALL_PATCH_FRACTION:  # a few pixels once drawn: marked with dots too
        x, y = zip(*centres, strict=True)
        axes.scatter(x, y, s=70, c=colours, edgecolors="black", linewidths=0.8)
        title += f"\n(patches of {p} px are specks at this scale: each is marked with a dot)"
    axes.set_title(title, fontsize=11)
    axes.set_xlabel("x (pixels)")
    axes.set_ylabel("y (pixels)")


def draw_occlusion(explanation: Explanation, file: IO[bytes]) -> None:
    """``occlusion.png``: the model input, the occlusion map laid over it with a colour bar and, for
    ``patch-select``, each patch's mean value on the image it was cut from."""
    import matplotlib
    from matplotlib.colors import Normalize

    occlusion = explanation.occlusion
    spec = explanation.spec
    size = spec.size
    heat = occlusion.heatmap
    patch_select = explanation.selection is not None
    figure = _new_figure(22 if patch_select else 15, 8)
    panels = figure.subplots(1, 3 if patch_select else 2, width_ratios=[1, 1, 1.2] if patch_select else None)
    input_axes, map_axes = panels[:2]
    _title(figure, explanation, "what the score depends on")

    what = ("mosaic of the selected patches" if patch_select else
            f"centre crop of the image resized to a shorter side of {size} px")
    input_axes.imshow(explanation.model_input, interpolation="nearest")
    input_axes.set_title(f"Model input ({size}×{size} px):\n{what}", fontsize=11)

    grey = cv2.cvtColor(explanation.model_input, cv2.COLOR_RGB2GRAY)
    map_axes.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    reach = float(np.abs(heat).max())
    cmap, norm = matplotlib.colormaps["RdBu_r"], Normalize(-(reach or 1.0), reach or 1.0)
    image = map_axes.imshow(heat, cmap=cmap, norm=norm, alpha=0.65, interpolation="nearest")
    if patch_select:  # tile borders, so a region can be matched with its patch in patches.png
        for edge in range(0, size + 1, spec.patch_size):
            map_axes.axhline(edge - 0.5, color="white", linewidth=0.4, alpha=0.6)
            map_axes.axvline(edge - 0.5, color="white", linewidth=0.4, alpha=0.6)
    windows = occlusion.drops.size
    map_axes.set_title(f"Occlusion map: {windows} windows of {occlusion.window}×{occlusion.window} px, stride "
                       f"{occlusion.stride},\neach filled with the mean colour in turn", fontsize=11)
    for axes in (input_axes, map_axes):
        axes.set_xticks([])
        axes.set_yticks([])
    if patch_select:
        _patch_values(panels[2], explanation, cmap, norm)
    bar = figure.colorbar(image, ax=panels, shrink=0.85, pad=0.01)
    bar.set_label("logit drop when masked\n(red: region pushed toward fake, blue: toward real)", fontsize=11)

    r, c = np.unravel_index(np.argmax(np.abs(occlusion.drops)), occlusion.drops.shape)
    if reach == 0:
        note = "No window changed the logit: the score does not depend on any single region of this size."
    else:
        note = (f"Each pixel: mean logit drop over the windows covering it. Strongest window (model-input pixels): "
                f"x {occlusion.lefts[c]}, y {occlusion.tops[r]}, drop {occlusion.drops[r, c]:+.3f} (unmasked logit "
                f"{occlusion.logit:+.3f}).")
    figure.supxlabel(note, fontsize=10)
    _save(figure, file)
