"""Pictures the report's chapters share: images side by side, boxes drawn on images,
prediction grids, heat maps, the colour look-up table, and the renderer's prompts as images.

The tables and the metric charts are in ``refcocog_tools.report.figures``, which re-exports
these names for the chapters that import them from there.
"""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from refcocog_tools.data.dataset import load_rgb_image
from refcocog_tools.prompts.render import (
    PREPROCESS_MODES,
    image_tensor,
    model_view,
    prompt_inputs,
    render_prompts,
    to_pil,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

GT_COLOUR = "limegreen"
PREDICTION_COLOUR = "red"


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


def annotated_examples(records: Sequence[Any], columns: int = 2, width: float = 5.0) -> Figure:
    """Referred objects in their images: the referred object's box in red, every other
    annotated object (a possible distractor) dashed in white; the title is the category and
    up to three expressions. ``records`` are ``data.annotations`` ref records."""
    import matplotlib.pyplot as plt

    if not records:
        raise ValueError("annotated_examples needs at least one record")
    columns = min(columns, len(records))
    rows = -(-len(records) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, 0.92 * width * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, record in zip(axes.flat, records, strict=False):
        ax.imshow(load_rgb_image(record.image_path))
        for inst in record.instances:
            if inst.ann_id != record.ann_id:
                draw_box(ax, inst.box, "white", linestyle="--", linewidth=1)
        draw_box(ax, record.box, "red")
        title = "\n".join(textwrap.shorten(s, 40) for s in record.sentences[:3])
        ax.set_title(f"[{record.category}]\n{title}", fontsize=11)
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
    drawn = render_prompts(image_tensor(image), torch.as_tensor(boxes, dtype=torch.float32),
                           variants, **render_params)
    return [[to_pil(prompt) for prompt in row] for row in drawn]


def preprocess_views(image: Image.Image, box: Sequence[float], resolution: int = 224,
                     variant: str = "blur", **render_params: Any) -> dict[str, Image.Image]:
    """What CLIP sees of one proposal's visual prompt in each ``--preprocess`` mode: the
    model input (``render.prompt_inputs``, torch backend) turned back into an image."""
    boxes = torch.tensor([list(box)], dtype=torch.float32)
    return {mode: model_view(prompt_inputs(image, boxes, (variant,), resolution,
                                           preprocess=mode, **render_params)[0])
            for mode in PREPROCESS_MODES}
