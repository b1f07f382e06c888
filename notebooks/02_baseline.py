# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The baseline: crop and match
#
# The simplest way to ground an expression with CLIP needs no training at all. A detector
# proposes candidate boxes; each candidate is cut out of the image and embedded by CLIP's image
# encoder; the expression is embedded by the text encoder; the candidate whose crop is closest
# to the expression (cosine similarity) is the answer. Every other method of this report is
# measured against this one.
#
# This chapter evaluates the baseline on a split, sets it beside the number the original study
# reported, splits the result by whether the expression talks about position, shows a few
# predictions, and adds three *floors*: methods that look at no pixel and no word (a random
# proposal, the largest one, the one nearest the centre). A method that does not beat them has
# learned nothing from CLIP.
#
# ````{tip}
# **Running this chapter on real data** (RefCOCOg, umd split):
#
# ```bash
# OMP_NUM_THREADS=1 papermill \
#     notebooks/02_baseline.ipynb out.ipynb \
#     -p data_root /data/refcocog \
#     -p clip RN50x16 -p proposals yolov8s \
#     -p device cuda
# papermill --help-notebook notebooks/02_baseline.ipynb
# make book CHAPTERS=02_baseline
# ```
#
# ```{include} ../_real_data.md
# ```
# ````

# %% tags=["parameters", "hide-input"]
data_root: str = ""  # empty: the embedded synthetic dataset (refcocog_tools.data.minidata)
clip: str = "toy-rn"  # CLIP backbone(s), comma-separated for an ensemble (study: RN50x16)
proposals: str = "gt"  # "gt" (ground-truth boxes) or a YOLO model (study: yolov5s, then yolov8s)
device: str = "cpu"
limit: int = 0  # evaluate the first N expressions of the split (0: all)
seed: int = 0  # which predictions the grid shows; the random floor's seed
split: str = "test"  # the split evaluated (the study's table states no split)
n_examples: int = 6  # predictions in the qualitative grid
results_dir: str = ""  # folder of the <method>.json results files (empty: results/ of the book)
dataset: str = "refcocog"  # refcocog, refcoco or refcoco+ (the data root's dataset of the family)
split_by: str = ""  # whose split (empty: the dataset's usual one, umd for refcocog)

# %% tags=["remove-input"]
import random

from refcocog_tools.engine.evaluate import evaluate, group_by_image
from refcocog_tools.engine.results import honesty_text, reading_note
from refcocog_tools.methods.registry import make_method
from refcocog_tools.report import glue, glue_figure, open_chapter
from refcocog_tools.report.figures import (
    comparison_table,
    metric_bar_chart,
    prediction_grid,
    results_table,
    show_table,
    spatial_table,
    table_source,
)
from refcocog_tools.report.reported import reported_value

chapter = open_chapter(globals())
root, dataset, backbones, proposer = (chapter.root, chapter.dataset, chapter.backbones,
                                      chapter.proposer)
baseline = evaluate(dataset, make_method("baseline", backbones), proposer, backbones, limit=limit)
chapter.save_results("baseline", baseline)
chapter.note

# %% [markdown]
# ## Baseline against the study
#
# The first row is the study's baseline as it reported it (RN50x16 backbone, torch-hub YOLOv5s
# proposals; its table states no split or sample count, and the only printed outputs of its cell
# are batch-0 numbers, quoted in the reported table under `baseline_batch0`); the second is what
# this build computed with the parameters of this run. The `numbers` column says which is which,
# and this run's numbers carry its label, *{glue:text}`baseline_label`*: unless the box at the
# top of the page says this build ran on RefCOCOg with pretrained weights, the two rows are not
# comparable.

# %% tags=["hide-input"]
show_table(*comparison_table(["baseline"], {"baseline (crop and match)": baseline}))

# %% tags=["remove-input"]
metrics = baseline["metrics"]
glue("baseline_miou", metrics["miou"])
glue("baseline_accuracy", metrics["accuracy"])
glue("baseline_n", metrics["n"])
glue("baseline_label", honesty_text(baseline["provenance"]))
glue("baseline_reading", reading_note(baseline["provenance"]))
glue("reported_miou", reported_value("baseline", "miou"))
glue("reported_accuracy", reported_value("baseline", "accuracy"))
glue("reported_cosine", reported_value("baseline", "cosine"))

# %% [markdown]
# The study's results table gives a mean IoU of {glue:text}`reported_miou:.3f`, an accuracy of
# {glue:text}`reported_accuracy:.3f` and a crop cosine similarity of
# {glue:text}`reported_cosine:.3f` for its baseline, without saying which split or how many
# expressions it covers. This run computed a mean IoU of {glue:text}`baseline_miou:.3f` and an
# accuracy of {glue:text}`baseline_accuracy:.3f` over {glue:text}`baseline_n` expressions,
# under the configuration in the box at the top of the page.
#
# ## Floors
#
# What the proposals are worth on their own: each floor ignores the expression. With
# ground-truth proposals every candidate is a real object, so the floors are far higher than
# with a detector's proposals. A baseline that cannot clear them has learnt nothing usable from
# CLIP; whether it does depends on the weights in the box at the top, not on the code.
# {numref}`fig-baseline-floors` compares them.

# %% tags=["hide-input"]
floors = {name: evaluate(dataset, make_method(name, backbones, seed=seed), proposer, backbones,
                         limit=limit)
          for name in ("random", "largest", "center")}
for name, doc in floors.items():
    chapter.save_results(name, doc)
with_floors = results_table({"baseline (crop and match)": baseline,
                             **{f"floor: {name}": doc for name, doc in floors.items()}})
fig = metric_bar_chart(with_floors, ("miou", "accuracy"),
                       title="baseline and floors (this build; see the box above)")
glue_figure("fig-baseline-floors", fig)
show_table(with_floors, f"{table_source([baseline, *floors.values()])}.")
best_floor = max(floors, key=lambda name: floors[name]["metrics"]["accuracy"])
glue("best_floor", best_floor)
glue("best_floor_accuracy", floors[best_floor]["metrics"]["accuracy"])
glue("baseline_vs_floors", "above" if metrics["accuracy"] > floors[best_floor]["metrics"]
     ["accuracy"] else "not above")

# %% [markdown]
# ```{glue:figure} fig-baseline-floors
# ---
# name: fig-baseline-floors
# alt: >-
#   Horizontal bars of mean IoU and accuracy for the baseline and the three floors.
# ---
# Mean IoU and accuracy of the baseline and of the three floors that ignore the expression (this
# build, configuration in the box at the top).
# ```
#
# In this run the baseline's accuracy, {glue:text}`baseline_accuracy:.3f`, is
# {glue:text}`baseline_vs_floors` that of the best floor (*{glue:text}`best_floor`*,
# {glue:text}`best_floor_accuracy:.3f`). {glue:text}`baseline_reading`

# %% [markdown]
# ## Spatial and non-spatial expressions
#
# The study's central observation about the baseline is that a crop has lost its place in the
# image: two identical objects give nearly identical crops, so "the one on the left" cannot
# be told from "the one on the right". If that is the weakness, the baseline should do worse
# on expressions that mention a position (`refcocog_tools.data.language.is_spatial`) than on the
# others. The table and chart split this run's result that way (numbers from this build only).
# {numref}`fig-baseline-spatial` shows the split.

# %% tags=["hide-input"]
by_spatial = spatial_table({"baseline": baseline, **{f"floor: {n}": d for n, d in floors.items()}})
chart = by_spatial.assign(method=by_spatial["method"] + ", " + by_spatial["expressions"])
fig = metric_bar_chart(chart, ("miou", "accuracy"),
                       title="spatial vs non-spatial expressions (this build)")
glue_figure("fig-baseline-spatial", fig)
show_table(by_spatial, f"{table_source([baseline])}.")

# %% [markdown]
# ```{glue:figure} fig-baseline-spatial
# ---
# name: fig-baseline-spatial
# alt: >-
#   Horizontal bars of mean IoU and accuracy on spatial and non-spatial expressions, for the
#   baseline and each floor.
# ---
# The baseline and the floors on spatial and on non-spatial expressions (this build).
# ```

# %% tags=["remove-input"]
spatial = metrics["by_spatial"]
glue("spatial_n", spatial["spatial"]["n"])
glue("non_spatial_n", spatial["non_spatial"]["n"])
glue("spatial_miou", spatial["spatial"]["miou"] or 0.0)
glue("non_spatial_miou", spatial["non_spatial"]["miou"] or 0.0)
glue("spatial_direction", "lower" if (spatial["spatial"]["miou"] or 0.0)
     < (spatial["non_spatial"]["miou"] or 0.0) else "not lower")

# %% [markdown]
# In this run {glue:text}`spatial_n` expressions are spatial and {glue:text}`non_spatial_n`
# are not; the baseline's mean IoU is {glue:text}`spatial_miou:.3f` on the former and
# {glue:text}`non_spatial_miou:.3f` on the latter: {glue:text}`spatial_direction` on the
# expressions that need position. A crop that has lost its place should make it lower, but the
# two groups of a split of a few dozen expressions also differ in other ways (categories,
# colours, how many look-alikes an image holds), so one run cannot prove the cause, and with
# untrained weights any gap is chance. The study made its observation by inspecting pretrained-model
# outputs on RefCOCOg.
#
# ## Predictions
#
# A few expressions with the ground-truth box (green, solid) and the baseline's prediction
# (red, dashed); the title is the expression and the IoU of the prediction. The expressions
# are a random sample (the `seed` parameter), not a selection of successes or failures, and the
# model that chose the boxes is the one named in the box at the top of the page.
# {numref}`fig-baseline-predictions` shows some.

# %% tags=["remove-input"]
images = {items[0].image_id: items[0].image for items in group_by_image(dataset, limit)}
rows = baseline["predictions"]
shown = random.Random(seed).sample(rows, k=min(n_examples, len(rows)))
glue_figure("fig-baseline-predictions", prediction_grid(images, shown))

# %% [markdown]
# ```{glue:figure} fig-baseline-predictions
# ---
# name: fig-baseline-predictions
# alt: >-
#   Test images with a green ground-truth box and a red dashed predicted box, titled with the
#   expression and the IoU.
# ---
# Predictions of the baseline: ground truth in green, prediction dashed in red, with the
# expression and the IoU above each image (this build).
# ```
