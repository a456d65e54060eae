"""The figures of an evaluation report, drawn with matplotlib (the ``report`` extra).

Each function returns a `matplotlib.figure.Figure` built without pyplot, so drawing changes no global state
(no backend switch, no open-figure registry) for an application that uses matplotlib itself; `save_png` renders
it with the Agg canvas. Curves come from scikit-learn. Probabilities are of "fake": fake is the positive class.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import FAKE, REAL
from .errors import DgsError, EvaluationError
from .files import AtomicFile

__all__ = [
    "DPI",
    "PANELS_PER_FIGURE",
    "DetectorScores",
    "require_matplotlib",
    "figure_text",
    "roc_figure",
    "pr_figure",
    "histogram_figure",
    "confusion_figure",
    "robustness_figure",
    "save_png",
    "RobustnessSeries",
    "FigureFile",
    "draw_report_figures",
]

DPI = 150
PANELS_PER_FIGURE = 12  # small multiples per figure: four columns of three rows stay legible on a screen
_COLUMNS = 4
_REAL_COLOR, _FAKE_COLOR = "#1f77b4", "#d62728"


def figure_text(text: str) -> str:
    """A name from a file or folder as matplotlib draws it literally: ``$`` escaped (it would start mathtext, and
    a stray one fails the drawing), and code points that are not characters (a file name that is not UTF-8) as
    backslash escapes (the font renderer refuses them)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("$", r"\$")


@dataclass(frozen=True)
class DetectorScores:
    """One detector's probabilities of "fake" on the labelled images, as the figures take them.

    Attributes:
        label: the detector's short name (`dgs_sdk.comparison.detector_labels`).
        truth: ``[N]`` labels, 0 real and 1 fake.
        probability: ``[N]`` probabilities of fake, NaN where the image could not be scored.
        generator: ``[N]`` generator names.
        threshold: the detector's decision threshold (fake when probability >= threshold).
    """

    label: str
    truth: np.ndarray
    probability: np.ndarray
    generator: np.ndarray
    threshold: float

    def scored(self, generator: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Labels and probabilities of the scored images, of one generator or (None) of all."""
        keep = ~np.isnan(self.probability)
        if generator is not None:
            keep &= self.generator == generator
        return self.truth[keep], self.probability[keep]


def require_matplotlib(purpose: str = "the report's figures", error: type[DgsError] = EvaluationError) -> Any:
    """Import matplotlib's `Figure` class, or say which extra installs it.

    Raises:
        ``error`` (`EvaluationError` by default): matplotlib is not installed; the message says what needed it.
    """
    try:
        importlib.import_module("matplotlib")  # first, so that a blocked parent is not bypassed by a cached submodule
        return importlib.import_module("matplotlib.figure").Figure
    except ImportError as e:
        raise error(f'{purpose} need matplotlib: pip install "dgs[report]" ({e})') from None


def _colors(count: int) -> list[Any]:
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    return [palette[i % len(palette)] for i in range(count)]


def _line_style(index: int) -> str:
    return ("-", "--", "-.", ":")[(index // 10) % 4]  # past ten detectors the colours repeat, the dashes differ


def _line_width(index: int, count: int, base: float) -> float:
    """Earlier detectors drawn wider, so that a curve equal to an earlier one (a run and the package exported from
    it) lies on it as a thinner line instead of hiding it."""
    return base + 1.2 * (min(count, 4) - 1 - min(index, 3)) if index < 4 else base


def _tail(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters from the left: labels differ by their last folders."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _wrapped(text: str, width: int = 26) -> str:
    """A long name on two lines of at most ``width`` characters, broken after a separator where there is one
    (generator names are often one long word such as ``stable-diffusion-xl-turbo``); past two lines the middle is
    elided, since names of one family differ by their ends (``...-v1-4``, ``...-v1-5``)."""
    if len(text) <= width:
        return text
    cut = max((text.rfind(c, 0, width) + 1 for c in " -_./"), default=0) or width
    first, rest = text[:cut].rstrip(), text[cut:].lstrip()
    return first + "\n" + (rest if len(rest) <= width else "…" + text[-(width - 1):].lstrip())


def _class_counts(truth: np.ndarray) -> str:
    return f"{int((truth == REAL).sum())} real / {int((truth == FAKE).sum())} fake"


def _one_class(ax: Any, truth: np.ndarray) -> None:
    what = "no image scored" if not len(truth) else f"one class only ({_class_counts(truth)}):\nno curve"
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.3")


def _grid(Figure: Any, panels: int, width: float, height: float, extra_height: float = 0.0,
          shared: bool = False) -> tuple[Any, list[Any]]:
    """A figure of ``panels`` axes; ``shared``: one scale for all, tick labels only on the outer panels."""
    # as square a grid as fits in four columns: 5 panels in 3 + 2, not 4 + 1
    columns = panels if panels <= _COLUMNS else min(_COLUMNS, math.ceil(math.sqrt(panels)))
    rows = -(-panels // columns)
    figure = Figure(figsize=(width * columns, height * rows + extra_height), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False, sharex=shared, sharey=shared).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    if shared:  # x labels under the lowest panel of each column, which may not be in the last row
        for i, ax in enumerate(axes[:panels]):
            ax.tick_params(labelbottom=i + columns >= panels, labelleft=i % columns == 0)
    return figure, axes[:panels]


def _roc_panel(ax: Any, scores: Sequence[DetectorScores], generator: str | None, small: bool) -> bool:
    """ROC curves of every detector on one generator (or all); False when the data holds one class only."""
    from sklearn.metrics import roc_auc_score, roc_curve

    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="auto" if small else "equal")
    ax.grid(alpha=0.3)
    drawn = False
    for i, (s, color) in enumerate(zip(scores, _colors(len(scores)), strict=True)):
        truth, probability = s.scored(generator)
        if not ((truth == REAL).any() and (truth == FAKE).any()):
            continue
        if not drawn:
            ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance (AUC 50%)")
        fpr, tpr, _ = roc_curve(truth, probability)
        auc = roc_auc_score(truth, probability)
        name = _tail(s.label, 18 if small else 40)
        ax.plot(fpr, tpr, color=color, linestyle=_line_style(i),
                linewidth=_line_width(i, len(scores), 1.4 if small else 1.8),
                label=f"{name}: AUC {100 * auc:.1f}%")
        called = probability >= s.threshold
        ax.plot(called[truth == REAL].mean(), called[truth == FAKE].mean(), marker="o", markersize=5 if small else 7,
                color=color, markeredgecolor="black", linestyle="none")
        drawn = True
    if not drawn:
        _one_class(ax, scores[0].scored(generator)[0] if scores else np.array([]))
    return drawn


def _pr_panel(ax: Any, scores: Sequence[DetectorScores], generator: str | None, small: bool) -> bool:
    """Precision-recall curves of every detector on one generator (or all), fake as the positive class."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="auto" if small else "equal")
    ax.grid(alpha=0.3)
    truth_all = scores[0].scored(generator)[0] if scores else np.array([])
    both = bool((truth_all == REAL).any() and (truth_all == FAKE).any())
    if both:
        prevalence = float((truth_all == FAKE).mean())
        ax.axhline(prevalence, color="0.6", linestyle=":", linewidth=1,
                   label=f"chance (share of fakes {100 * prevalence:.0f}%)")
    drawn = False
    for i, (s, color) in enumerate(zip(scores, _colors(len(scores)), strict=True)):
        truth, probability = s.scored(generator)
        if not ((truth == REAL).any() and (truth == FAKE).any()):
            continue
        precision, recall, _ = precision_recall_curve(truth, probability)
        ap = average_precision_score(truth, probability)
        name = _tail(s.label, 18 if small else 40)
        ax.plot(recall, precision, color=color, linestyle=_line_style(i),
                linewidth=_line_width(i, len(scores), 1.4 if small else 1.8),
                drawstyle="steps-post", label=f"{name}: AP {100 * ap:.1f}%")
        called = probability >= s.threshold
        if called.any():  # precision is undefined when nothing is called fake
            ax.plot(called[truth == FAKE].mean(), (truth[called] == FAKE).mean(), marker="o",
                    markersize=5 if small else 7, color=color, markeredgecolor="black", linestyle="none")
        drawn = True
    if not drawn:
        _one_class(ax, truth_all)
    return drawn


_CURVES = {
    "roc": (_roc_panel, "false positive rate (real images called fake)", "true positive rate (fakes caught)",
            "lower right"),
    "pr": (_pr_panel, "recall (fakes caught)", "precision (images called fake that are fake)", "lower left"),
}


def _operating_point_key(ax: Any, handles_from: Any, location: str, fontsize: float) -> None:
    from matplotlib.lines import Line2D

    handles, names = handles_from.get_legend_handles_labels()
    handles.append(Line2D([], [], marker="o", color="0.5", markeredgecolor="black", linestyle="none"))
    names.append("at each detector's threshold")
    ax.legend(handles, names, loc=location, fontsize=fontsize, framealpha=0.9)


def _curve_figure(kind: str, scores: Sequence[DetectorScores], generators: Sequence[str] | None, title: str) -> Any:
    Figure = require_matplotlib()
    panel, xlabel, ylabel, location = _CURVES[kind]
    if generators is None:
        figure = Figure(figsize=(6.4, 6.4), layout="constrained")
        ax = figure.subplots()
        if panel(ax, scores, None, small=False):
            _operating_point_key(ax, ax, location, 9)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.set_title(title, fontsize=11)
        return figure
    figure, axes = _grid(Figure, len(generators), 3.2, 3.4, extra_height=0.6, shared=True)
    for ax, generator in zip(axes, generators, strict=True):
        if panel(ax, scores, generator, small=True):
            ax.legend(loc=location, fontsize=6.5, framealpha=0.9, handlelength=1.5)
        truth = scores[0].scored(generator)[0] if scores else np.array([])
        ax.set_title(f"{_wrapped(generator)}\n{_class_counts(truth)}", fontsize=8.5)
        ax.tick_params(labelsize=7)
    ticks = [0, 0.25, 0.5, 0.75, 1]  # fixed: drawing many panels spends most of its time placing automatic ticks
    axes[0].set_xticks(ticks, ["0", ".25", ".5", ".75", "1"])
    axes[0].set_yticks(ticks, ["0", ".25", ".5", ".75", "1"])
    figure.suptitle(title + "\n(● marks each detector at its threshold)", fontsize=11)
    figure.supxlabel(xlabel, fontsize=9.5)
    figure.supylabel(ylabel, fontsize=9.5)
    return figure


def roc_figure(scores: Sequence[DetectorScores], generators: Sequence[str] | None = None, title: str = "ROC") -> Any:
    """ROC curves, one line per detector with its AUC in the legend, a dot at its threshold, the chance diagonal.

    Args:
        scores: the detectors, on the same images.
        generators: None for one panel over every scored image, else one small panel per generator (at most
            `PANELS_PER_FIGURE` are legible; the caller pages them).
        title: the figure's title.
    """
    return _curve_figure("roc", scores, generators, title)


def pr_figure(scores: Sequence[DetectorScores], generators: Sequence[str] | None = None,
              title: str = "Precision-recall") -> Any:
    """Precision-recall curves (fake is the positive class), as `roc_figure`: AP in the legend, a dot at each
    detector's threshold, and the chance level (the share of fakes) as a dotted line."""
    return _curve_figure("pr", scores, generators, title)


def histogram_figure(scores: Sequence[DetectorScores], title: str = "Scores of real and fake images") -> Any:
    """Per detector, the distribution of its probability of fake over real and over fake images (each class's
    bars sum to 1, so unequal class sizes compare), with its threshold as a labelled vertical line."""
    Figure = require_matplotlib()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    figure, axes = _grid(Figure, len(scores), 4.2, 3.4, extra_height=0.6)
    bins = np.linspace(0.0, 1.0, 41)
    classes = ((REAL, "real images", _REAL_COLOR), (FAKE, "fake images", _FAKE_COLOR))
    for ax, s in zip(axes, scores, strict=True):
        truth, probability = s.scored()
        for label, _, color in classes:
            values = probability[truth == label]
            if len(values):
                ax.hist(values, bins=bins, weights=np.full(len(values), 1.0 / len(values)), color=color, alpha=0.45,
                        edgecolor=color, linewidth=0.8, histtype="stepfilled")
        ax.axvline(s.threshold, color="black", linestyle="--", linewidth=1.2)
        ax.text(s.threshold, 0.98, f" threshold {s.threshold:.3f} ", transform=ax.get_xaxis_transform(),
                ha="left" if s.threshold < 0.6 else "right", va="top", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
        ax.set_xlim(0, 1)
        ax.set_ylim(top=ax.get_ylim()[1] * 1.12)  # room for the threshold's label
        ax.set_title(f"{_tail(s.label, 40)}\n{_class_counts(truth)} scored", fontsize=10)
        ax.set_xlabel("probability of fake", fontsize=9)
        ax.set_ylabel("share of the class's images", fontsize=9)
        ax.tick_params(labelsize=8)
    handles = [Patch(facecolor=color, edgecolor=color, alpha=0.45, label=name) for _, name, color in classes]
    handles.append(Line2D([], [], color="black", linestyle="--", label="the detector's threshold"))
    figure.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    figure.suptitle(title, fontsize=11)
    return figure


def confusion_figure(scores: Sequence[DetectorScores], title: str = "Confusion matrices at each threshold") -> Any:
    """Per detector, real/fake against called real/fake at its threshold: counts, and the share of each true
    class (rows sum to 100%)."""
    Figure = require_matplotlib()
    figure, axes = _grid(Figure, len(scores), 3.6, 3.4, extra_height=0.4)
    for ax, s in zip(axes, scores, strict=True):
        truth, probability = s.scored()
        called = (probability >= s.threshold).astype(int)
        counts = np.array([[np.sum((truth == t) & (called == c)) for c in (REAL, FAKE)] for t in (REAL, FAKE)])
        rows = counts.sum(axis=1, keepdims=True)
        share = np.divide(100.0 * counts, rows, out=np.zeros(counts.shape), where=rows > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
        for t in range(2):
            for c in range(2):
                text = f"{counts[t, c]}\n({share[t, c]:.1f}%)" if rows[t, 0] else "0\n(no images)"
                ax.text(c, t, text, ha="center", va="center", fontsize=10,
                        color="white" if share[t, c] > 60 else "black")
        ax.set_xticks([0, 1], ["real", "fake"])
        ax.set_yticks([0, 1], ["real", "fake"])
        ax.set_xlabel("predicted", fontsize=9)
        ax.set_ylabel("true", fontsize=9)
        ax.set_title(f"{_tail(s.label, 40)}\nthreshold {s.threshold:.3f}", fontsize=10)
    figure.suptitle(title + "\n(count, and share of the true class)", fontsize=11)
    return figure


def robustness_figure(levels: Sequence[str], values: Mapping[str, Mapping[str, Sequence[float | None]]],
                      title: str, xlabel: str) -> Any:
    """Two panels, mean AUC and mean accuracy against the perturbation level, one line per detector.

    Args:
        levels: the x axis, from ``none`` (the clean images) to the harshest level.
        values: per detector label, ``{"auc": [...], "acc": [...]}`` with one value per level (fractions, None
            where the level was not run or the data holds one class only).
        title: the figure's title (the perturbation).
        xlabel: what a level is (``JPEG quality``...).
    """
    Figure = require_matplotlib()
    figure = Figure(figsize=(10.5, 4.4), layout="constrained")
    axes = figure.subplots(1, 2)
    x = np.arange(len(levels))
    colors = _colors(len(values))
    panels = (("auc", "mean AUC over generators"), ("acc", "mean accuracy at the threshold"))
    for ax, (key, ylabel) in zip(axes, panels, strict=True):
        ax.axhline(50, color="0.6", linestyle=":", linewidth=1)
        drawn = False
        for i, ((label, series), color) in enumerate(zip(values.items(), colors, strict=True)):
            y = np.array([np.nan if v is None else 100 * v for v in series[key]], dtype=float)
            if np.isnan(y).all():
                continue
            ax.plot(x, y, color=color, linestyle=_line_style(i), marker="o", linewidth=_line_width(i, len(values), 1.8),
                    markersize=6 + 2 * (len(values) - 1 - i) if i < 4 and len(values) <= 4 else 6,
                    label=_tail(label, 36))
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "one class only: no AUC" if key == "auc" else "no value", ha="center", va="center",
                    transform=ax.transAxes, color="0.3")
        ax.set_xticks(x, [str(level) for level in levels])
        ax.set_xlim(-0.3, len(levels) - 0.7)
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
        ax.set_xlabel(f"{xlabel}  (clean → harsher)", fontsize=9)
        ax.set_ylabel(f"{ylabel} (%)", fontsize=9)
        if drawn:
            ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    figure.suptitle(f"{title} (dotted: chance, 50%)", fontsize=11)
    return figure


def save_png(figure: Any, path: str | os.PathLike) -> None:
    """Render ``figure`` with the Agg canvas into ``path`` (written atomically), at `DPI`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with AtomicFile(path) as out:
        figure.savefig(out.file, format="png", dpi=DPI)


@dataclass(frozen=True)
class RobustnessSeries:
    """One perturbation kind's figure: mean AUC and accuracy per level, per detector (`robustness_figure`).

    Attributes:
        kind: the perturbation (``jpeg``...).
        file_name: a name for the PNG file, safe on every file system.
        title: the figure's title (``JPEG compression``).
        level_name: what a level is (``JPEG quality``).
        levels: ``none`` (the clean images) first, then the levels from the mildest to the harshest.
        values: per detector label, ``{"auc": [...], "acc": [...]}``, one value or None per level.
    """

    kind: str
    file_name: str
    title: str
    level_name: str
    levels: list[str]
    values: dict[str, dict[str, list[float | None]]]


@dataclass(frozen=True)
class FigureFile:
    """A figure written: its path, a short title, a one-line caption, and its topic (``curves``, ``scores`` or
    ``robustness:<kind>``), by which the report places it."""

    path: Path
    title: str
    caption: str
    topic: str


def _pages(items: list[str], per_page: int) -> list[list[str]]:
    """``items`` in pages of at most ``per_page``, the pages as even as possible (20 in pages of 12: 10 and 10)."""
    count = -(-len(items) // per_page)
    size = -(-len(items) // max(count, 1))
    return [items[i:i + size] for i in range(0, len(items), size)]


def draw_report_figures(folder: str | os.PathLike, scores: Sequence[DetectorScores],
                        robustness: Sequence[RobustnessSeries] = ()) -> list[FigureFile]:
    """Every figure of an evaluation report, as PNG files in ``folder`` (which exists).

    ``roc.png`` and ``pr.png`` over every scored image pooled; with several generators ``roc_generators.png`` and
    ``pr_generators.png`` (``_1``, ``_2``... past `PANELS_PER_FIGURE` generators); ``histograms.png``;
    ``confusion.png``; ``robustness_<file_name>.png`` per perturbation kind.
    """
    folder = Path(folder)
    generators = sorted({str(g) for g in scores[0].generator}) if scores else []
    drawn: list[FigureFile] = []

    def save(figure: Any, name: str, title: str, caption: str, topic: str) -> None:
        save_png(figure, folder / name)
        drawn.append(FigureFile(folder / name, title, caption, topic))

    def pooled(metric: str) -> str:
        return (f"A dot marks each detector at its threshold. All generators pooled: the {metric} here is not the "
                "tables' mean, which averages the generators.")

    title = "ROC, all generators pooled"
    save(roc_figure(scores, title=title), "roc.png", title, f"ROC curves, AUC in the legend. {pooled('AUC')}",
         "curves")
    title = "Precision-recall, all generators pooled"
    save(pr_figure(scores, title=f"{title} (fake is the positive class)"), "pr.png", title,
         f"Precision-recall curves, fake the positive class, AP in the legend; dotted: the share of fakes, which "
         f"chance gives. {pooled('AP')}", "curves")
    if len(generators) > 1:
        pages = _pages(generators, PANELS_PER_FIGURE)
        for kind, draw, what in (("roc", roc_figure, "ROC"), ("pr", pr_figure, "Precision-recall")):
            for i, page in enumerate(pages, start=1):
                of = f" ({i} of {len(pages)})" if len(pages) > 1 else ""
                title = f"{what} per generator{of}"
                name = f"{kind}_generators{f'_{i}' if len(pages) > 1 else ''}.png"
                first_last = f", {page[0]} to {page[-1]}" if len(pages) > 1 else ""
                save(draw(scores, page, title=title), name, title,
                     f"{what} curves per generator{of}{first_last}; each detector's "
                     f"{'AUC' if kind == 'roc' else 'AP'} in the panel's legend, a dot at its threshold.", "curves")
    save(histogram_figure(scores), "histograms.png", "Scores of real and fake images",
         "Each detector's probability of fake on real and on fake images (each class's bars sum to 1); dashed: its "
         "threshold.", "scores")
    save(confusion_figure(scores), "confusion.png", "Confusion matrices",
         "Confusion matrices at each detector's threshold: counts, and in brackets the share of the true class.",
         "scores")
    for series in robustness:
        save(robustness_figure(series.levels, series.values, title=series.title, xlabel=series.level_name),
             f"robustness_{series.file_name}.png", f"Robustness: {series.title}",
             f"{series.title}: mean AUC and mean accuracy over the generators at each level, from the clean images "
             "(none) to the harshest.", f"robustness:{series.kind}")
    return drawn
