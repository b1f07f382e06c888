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
# ```{glue:md} verdict
# :format: myst
# ```

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

from refcocog_tools.engine.evaluate import group_by_image
from refcocog_tools.report import chapter_answers as answers
from refcocog_tools.report import glue, glue_figure, glue_verdict, open_chapter
from refcocog_tools.report.figure_panels import prediction_grid
from refcocog_tools.report.figures import metric_bar_chart, show_table, spatial_table
from refcocog_tools.report.result_tables import table_source

chapter = open_chapter(globals())
dataset = chapter.dataset
runs = {name: chapter.evaluate(name) for name in ("baseline", "random", "largest", "center")}
for name, document in runs.items():
    chapter.save_results(name, document)
chapter.note

# %% [markdown]
# ## The baseline against the floors
#
# A *floor* is a method that looks at no pixel and no word: a random proposal, the largest
# one, the one nearest the centre. A baseline that cannot clear them has learnt nothing usable
# from CLIP. With ground-truth proposals every candidate is a real object, so the floors are
# far higher than with a detector's proposals. {numref}`fig-baseline-floors` draws the table.

# %% tags=["remove-input"]
labelled = {"baseline (crop and match)": runs["baseline"],
            **{f"floor: {name}": runs[name] for name in ("random", "largest", "center")}}
table = answers.method_table(labelled)
chart = table.assign(miou=[c.estimate for c in table["miou"]],
                     accuracy=[c.estimate for c in table["accuracy"]])
glue_figure("fig-baseline-floors", metric_bar_chart(
    chart, ("miou", "accuracy"), intervals=answers.chart_intervals(labelled)))
show_table(table, answers.method_caption(labelled))

# %% [markdown]
# ```{glue:figure} fig-baseline-floors
# ---
# name: fig-baseline-floors
# alt: >-
#   Horizontal bars, one per method, of the baseline and the three floors, each with its
#   value and a 95% interval as an error bar.
# ---
# The baseline and the three floors that ignore the expression, with 95% intervals.
# ```

# %% tags=["remove-input"]
best_floor = max(("random", "largest", "center"),
                 key=lambda name: runs[name]["metrics"]["accuracy"])
glue("best_floor", best_floor)
against_floor = answers.comparison_answer("the baseline", runs["baseline"],
                                          f"the {best_floor} floor", runs[best_floor])
glue("baseline_vs_floor", against_floor)

# %% [markdown]
# Against the best floor (*{glue:text}`best_floor`*), paired on the same expressions:
# {glue:text}`baseline_vs_floor` The interval is over images, since the expressions of one
# image share its picture and its proposals; McNemar's test counts the expressions one method
# gets right and the other wrong.
#
# ## The baseline against the study
#
# The study's row is its baseline as it reported it (RN50x16, torch-hub YOLOv5s proposals; its
# table states no split or sample count; the only printed outputs of its cell are batch-0
# numbers, quoted in the reported table under `baseline_batch0`). The two rows are comparable
# only when the box at the top says this build ran on RefCOCOg with pretrained weights.

# %% tags=["remove-input"]
show_table(*answers.study_and_build_table(["baseline"],
                                          {"baseline (crop and match)": runs["baseline"]}))

# %% [markdown]
# ## Spatial and non-spatial expressions
#
# The study's central observation about the baseline is that a crop has lost its place in the
# image: two identical objects give nearly identical crops, so "the one on the left" cannot
# be told from "the one on the right". If that is the weakness, the baseline should do worse
# on expressions that mention a position (`refcocog_tools.data.language.is_spatial`) than on
# the others. {numref}`fig-baseline-spatial` splits this build's result that way.

# %% tags=["remove-input"]
by_spatial = spatial_table({"baseline": runs["baseline"],
                            **{f"floor: {n}": runs[n] for n in ("random", "largest", "center")}})
chart = by_spatial.assign(method=by_spatial["method"] + ", " + by_spatial["expressions"])
glue_figure("fig-baseline-spatial", metric_bar_chart(chart, ("miou", "accuracy")))
spatial = runs["baseline"]["metrics"]["by_spatial"]
glue("spatial_n", spatial["spatial"]["n"])
glue("non_spatial_n", spatial["non_spatial"]["n"])
glue("spatial_miou", spatial["spatial"]["miou"] or 0.0)
glue("non_spatial_miou", spatial["non_spatial"]["miou"] or 0.0)
glue("spatial_direction", "lower" if (spatial["spatial"]["miou"] or 0.0)
     < (spatial["non_spatial"]["miou"] or 0.0) else "not lower")
show_table(by_spatial, f"{table_source([runs['baseline']])}.")

# %% [markdown]
# ```{glue:figure} fig-baseline-spatial
# ---
# name: fig-baseline-spatial
# alt: >-
#   Horizontal bars for the baseline and each floor, once on spatial and once on non-spatial
#   expressions.
# ---
# The baseline and the floors on spatial and on non-spatial expressions.
# ```
#
# In this run {glue:text}`spatial_n` expressions are spatial and {glue:text}`non_spatial_n`
# are not; the baseline's mean IoU is {glue:text}`spatial_miou:.3f` on the former and
# {glue:text}`non_spatial_miou:.3f` on the latter: {glue:text}`spatial_direction` on the
# expressions that need position. The two groups also differ in other ways (categories,
# colours, how many look-alikes an image holds), so one run cannot prove the cause. The study
# made its observation by inspecting pretrained-model outputs on RefCOCOg.
#
# ## Predictions
#
# A few expressions with the ground-truth box (green, solid) and the baseline's prediction
# (red, dashed); the title is the expression and the IoU of the prediction. The expressions
# are a random sample (the `seed` parameter), not a selection of successes or failures.
# {numref}`fig-baseline-predictions` shows them.

# %% tags=["remove-input"]
images = {items[0].image_id: items[0].image for items in group_by_image(dataset, limit)}
rows = runs["baseline"]["predictions"]
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
# expression and the IoU above each image.
# ```

# %% tags=["remove-input"]
glue_verdict(
    "Does matching crops of the proposals with CLIP pick the referred object more often than "
    "a rule that ignores the expression?",
    against_floor[0].upper() + against_floor[1:],
    "The study reported, for its " + answers.study_report("baseline", split="not stated")
    + " It reported no floor.")

# %% [markdown]
# ## Background
#
# The simplest way to ground an expression with CLIP needs no training at all. A detector
# proposes candidate boxes; each candidate is cut out of the image and embedded by CLIP's image
# encoder; the expression is embedded by the text encoder; the candidate whose crop is closest
# to the expression (cosine similarity) is the answer. Every other method of this report is
# measured against this one.
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
