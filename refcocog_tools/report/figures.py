"""Tables and figures the report's chapters share.

A table's numbers come from one place, or from two kept apart: the study's rows (quoted from
``refcocog_tools.report.reported``)
and this build's. ``show_table`` displays a table with its source
stated once, in the caption (``table_source`` writes it from the results documents), numbers
to three decimals, counts as integers, no index and one mark for a missing value.
"""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from PIL import Image

from refcocog_tools.engine.results import build_source
from refcocog_tools.report.result_tables import (  # noqa: F401 - the chapters import them here
    DECIMALS,
    METRICS,
    MISSING,
    _metric_values,
    comparison_table,
    interval_table,
    reported_caption,
    reported_source,
    reported_table,
    results_table,
    study_vs_build,
    study_vs_build_chart,
    table_source,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

GT_COLOUR = "limegreen"
PREDICTION_COLOUR = "red"


# ----------------------------------------------------------------------------------------------
# Tables of results (``result_tables``, re-exported here)
# ----------------------------------------------------------------------------------------------
def spatial_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per method, the metrics on spatial and on non-spatial expressions (source: caption)."""
    rows = []
    for label, doc in results.items():
        for subset, key in (("spatial", "spatial"), ("non-spatial", "non_spatial")):
            group = doc["metrics"]["by_spatial"][key]
            rows.append({"method": label, "expressions": subset, "n": int(group["n"]),
                         **_metric_values(group)})
    return pd.DataFrame(rows, columns=["method", "expressions", "n", *METRICS])


# ----------------------------------------------------------------------------------------------
# Displaying a table
# ----------------------------------------------------------------------------------------------
def _is_count_column(name: str, column: pd.Series) -> bool:
    """A column of whole numbers (counts), shown without decimals; metrics never are."""
    if name in METRICS or not pd.api.types.is_numeric_dtype(column) or \
            pd.api.types.is_bool_dtype(column):
        return False
    values = column.dropna()
    return pd.api.types.is_integer_dtype(column) or bool(
        len(values) and (values.astype(float) % 1 == 0).all())


def _formatted(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell as the text a reader sees."""
    shown = {}
    for name in frame.columns:
        column = frame[name]
        if _is_count_column(str(name), column):
            text = [MISSING if pd.isna(v) else f"{int(v)}" for v in column]
        elif pd.api.types.is_float_dtype(column):
            text = [MISSING if pd.isna(v) else f"{v:.{DECIMALS}f}" for v in column]
        else:
            text = [MISSING if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)
                    for v in column]
        shown[name] = text
    return pd.DataFrame(shown, columns=frame.columns)


class Table:
    """A table as a page shows it: the caption (its source), then the rows.

    HTML in the book (``text/html``), aligned text elsewhere (``text/plain``, which nbval
    compares): the same three-decimal cells in both.
    """

    def __init__(self, frame: pd.DataFrame, caption: str) -> None:
        self.frame = frame
        self.caption = caption

    def _repr_html_(self) -> str:
        import html

        body = _formatted(self.frame).to_html(index=False, escape=True, border=0,
                                              classes="dataframe refcocog-table")
        caption = f"<caption>{html.escape(self.caption)}</caption>"
        return body.replace(">\n", f">\n{caption}\n", 1) if self.caption else body

    def __repr__(self) -> str:
        text = _formatted(self.frame).to_string(index=False)
        return f"{self.caption}\n{text}" if self.caption else text


def show_table(frame: pd.DataFrame, caption: str = "") -> Table:
    """``frame`` formatted for a page with its source in ``caption``; the cell's last line."""
    if isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index(drop=True)
    else:  # a labelled index (epochs, named rows) is a column of the page's table
        frame = frame.reset_index(names=frame.index.name or "")
    return Table(frame, caption)


def expression_type_table(results: Mapping[str, Mapping[str, Any]],
                          root: str | Path) -> pd.DataFrame:
    """Accuracy (IoU >= 0.5) per method and per expression type of the embedded dataset
    (``minidata.expression_type``: plain / position / size / relation), one column per type,
    with ``n`` per type in the first row label and the source of every row."""
    from refcocog_tools.data.minidata import EXPRESSION_TYPES, expression_audit

    rows, counts = [], {}
    for label, doc in results.items():
        audit = expression_audit(root, doc["predictions"])
        by_type = audit.groupby("type")["correct"]
        counts = by_type.size().to_dict()
        accuracy = by_type.mean().to_dict()
        rows.append({"method": label,
                     **{t: float(accuracy.get(t, float("nan"))) for t in EXPRESSION_TYPES},
                     "all": float(audit["correct"].mean()), "source": build_source(doc)})
    names = {t: f"{t} (n={counts.get(t, 0)})" for t in EXPRESSION_TYPES}
    return pd.DataFrame(rows, columns=["method", *EXPRESSION_TYPES, "all", "source"]).rename(
        columns=names)


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def metric_bar_chart(table: pd.DataFrame, metrics: Sequence[str] = ("miou", "accuracy"),
                     label: str = "method", title: str = "", width: float = 7.0,
                     reference: Mapping[str, float] | None = None) -> Figure:
    """Grouped horizontal bars: one group per row of ``table``, one bar per metric.

    ``reference`` draws a dotted vertical line per metric (e.g. a floor), labelled.
    """
    import matplotlib.pyplot as plt

    if table.empty:
        raise ValueError("metric_bar_chart needs at least one row")
    labels = [textwrap.shorten(str(v), 52) for v in table[label]]
    height = max(2.0, 0.28 * len(labels) * len(metrics) + 0.8)
    fig, ax = plt.subplots(figsize=(width, height))
    step = 0.8 / len(metrics)
    positions = range(len(labels))
    for k, metric in enumerate(metrics):
        offsets = [p - 0.4 + step * (k + 0.5) for p in positions]
        ax.barh(offsets, table[metric].astype(float), height=step, label=metric,
                color=f"C{k}")
        if reference and metric in reference:
            ax.axvline(reference[metric], color=f"C{k}", linestyle=":", linewidth=1)
    ax.set_yticks(list(positions), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("value")
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def side_by_side(images: Sequence[Image.Image], titles: Sequence[str] | None = None,
                 width: float = 3.2, columns: int | None = None) -> Figure:
    """A matplotlib figure showing ``images`` in a row (or a grid of ``columns``).

    Each image gets a thin grey frame, so that a white or pale picture keeps its edges on a
    white page.
    """
    import matplotlib.pyplot as plt  # lazy: plotting is only needed for the book

    if not images:
        raise ValueError("side_by_side needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    columns = min(columns or len(images), len(images))
    rows = -(-len(images) // columns)
    aspect = max(im.size[1] / im.size[0] for im in images)
    # Room for the longest title (two lines at least) above every row, so titles never cover
    # the images of the row above.
    lines = max(2, *(title.count("\n") + 1 for title in titles)) if titles is not None else 0
    title_room = 0.225 * lines * rows if titles is not None else 0.2
    fig, axes = plt.subplots(rows, columns,
                             figsize=(width * columns, width * aspect * rows + title_room),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(images):
            ax.axis("off")
            continue
        ax.imshow(images[k])
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("0.55")
            spine.set_linewidth(1.0)
        if titles is not None:
            ax.set_title(titles[k], fontsize=10)
    fig.tight_layout()
    return fig


def draw_box(ax: Axes, box: Sequence[float] | torch.Tensor, colour: str,
             linestyle: str = "-", linewidth: float = 2.0) -> None:
    """An unfilled xyxy rectangle on a matplotlib image axis."""
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in (box.tolist() if isinstance(box, torch.Tensor) else box))
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                           linestyle=linestyle, linewidth=linewidth))


def prediction_grid(images: Mapping[int, Image.Image], rows: Sequence[Mapping[str, Any]],
                    columns: int = 3, width: float = 3.6) -> Figure:
    """Predictions against ground truth: green ground-truth box, red predicted box.

    ``rows`` are ``evaluate`` prediction rows (``image_id``, ``box``, ``gt_box``, ``sentence``,
    ``iou``); ``images`` maps image ids to the decoded images. The expression and the IoU are
    the panel's title.
    """
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("prediction_grid needs at least one prediction row")
    columns = min(columns, len(rows))
    n_rows = -(-len(rows) // columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(width * columns, width * n_rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, row in zip(axes.flat, rows, strict=False):
        ax.imshow(images[row["image_id"]])
        draw_box(ax, row["gt_box"], GT_COLOUR)
        draw_box(ax, row["box"], PREDICTION_COLOUR, linestyle="--")
        title = textwrap.fill(textwrap.shorten(str(row["sentence"]), 70), 36)
        ax.set_title(f"{title}\nIoU {float(row['iou']):.2f}", fontsize=10)
    fig.tight_layout()
    return fig


def lut_figure(grid: Sequence[Sequence[str]], rgb: Mapping[str, Sequence[int]],
               x_cuts: Sequence[float], y_cuts: Sequence[float]) -> Figure:
    """The 3x3 colour look-up table drawn over the unit square, cells at their true cuts."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    xs = [0.0, *x_cuts, 1.0]
    ys = [0.0, *y_cuts, 1.0]
    fig, ax = plt.subplots(figsize=(4, 3.2))
    for r, row in enumerate(grid):
        for c, name in enumerate(row):
            colour = tuple(v / 255 for v in rgb[name])
            ax.add_patch(Rectangle((xs[c], ys[r]), xs[c + 1] - xs[c], ys[r + 1] - ys[r],
                                   facecolor=colour, edgecolor="grey"))
            luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
            ax.text((xs[c] + xs[c + 1]) / 2, (ys[r] + ys[r + 1]) / 2, name, ha="center",
                    va="center", color="black" if luminance > 0.5 else "white", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)  # image coordinates: y grows downwards
    ax.set_xticks(xs)
    ax.set_yticks(ys)
    ax.set_xlabel("normalised x of the proposal's centroid")
    ax.set_ylabel("normalised y")
    ax.set_title("colour look-up table", fontsize=10)
    fig.tight_layout()
    return fig


def heatmap_grid(image: Image.Image, heatmaps: torch.Tensor, boxes: torch.Tensor,
                 gt_boxes: Sequence[Sequence[float]], titles: Sequence[str],
                 width: float = 3.6, alpha: float = 0.5) -> Figure:
    """One panel per heat map: the image, the map on top (``jet``), the box thresholded from
    the map (red, dashed) and the ground-truth box (green)."""
    import matplotlib.pyplot as plt

    if not (len(heatmaps) == len(boxes) == len(gt_boxes) == len(titles)):
        raise ValueError("need one box, ground-truth box and title per heat map")
    n = len(heatmaps)
    fig, axes = plt.subplots(1, n, figsize=(width * n, width), squeeze=False)
    for ax, heat, box, gt, title in zip(axes.flat, heatmaps, boxes, gt_boxes, titles,
                                        strict=True):
        ax.set_axis_off()
        ax.imshow(image)
        ax.imshow(heat.numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1)
        draw_box(ax, gt, GT_COLOUR)
        draw_box(ax, box, PREDICTION_COLOUR, linestyle="--")
        ax.set_title(textwrap.fill(textwrap.shorten(title, 60), 30), fontsize=11)
    fig.tight_layout()
    return fig


def ultralytics_photo(name: str) -> Path:
    """A photograph shipped inside the ultralytics package (``bus.jpg``, ``zidane.jpg``).

    Found without importing ultralytics: importing it outside ``load_yolo`` would create its
    settings file in the user's home and print that into a notebook's output.
    """
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the ultralytics package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not among the photographs ultralytics ships")
    return path


def tensor_variants(image: Image.Image, boxes: Sequence[Sequence[float]] | torch.Tensor,
                    variants: Sequence[str], **render_params: Any) -> list[list[Image.Image]]:
    """``result[i][j]``: proposal ``i`` in ``variants[j]``, drawn by the tensor renderer the
    engine uses (``render.render_prompts``), as Pillow images for ``side_by_side``."""
    from refcocog_tools.prompts.render import image_tensor, render_prompts, to_pil

    drawn = render_prompts(image_tensor(image), torch.as_tensor(boxes, dtype=torch.float32),
                           variants, **render_params)
    return [[to_pil(prompt) for prompt in row] for row in drawn]


def preprocess_views(image: Image.Image, box: Sequence[float], resolution: int = 224,
                     variant: str = "blur", **render_params: Any) -> dict[str, Image.Image]:
    """What CLIP sees of one proposal's visual prompt in each ``--preprocess`` mode: the
    model input (``render.prompt_inputs``, torch backend) turned back into an image."""
    from refcocog_tools.prompts.render import PREPROCESS_MODES, model_view, prompt_inputs

    boxes = torch.tensor([list(box)], dtype=torch.float32)
    return {mode: model_view(prompt_inputs(image, boxes, (variant,), resolution,
                                           preprocess=mode, **render_params)[0])
            for mode in PREPROCESS_MODES}
