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
# # Grad-CAM and CLIPSeg
#
# ```{glue:md} verdict
# :format: myst
# ```

# %% tags=["parameters", "hide-input"]
from refcocog_tools.methods.gradcam import GradCamOptions  # the method's defaults

data_root: str = ""  # empty: the embedded synthetic dataset (refcocog_tools.data.minidata)
clip: str = "toy-rn"  # CLIP backbone(s), comma-separated (the study used a ViT for Grad-CAM)
proposals: str = "gt"  # only used by the snap-to-proposal variant and the baseline row
device: str = "cpu"
limit: int = 0  # evaluate the first N expressions of the split (0: all)
seed: int = 0
split: str = "test"
threshold: float = GradCamOptions.threshold  # box around heat of threshold x the maximum or more
image_index: int = 0  # which image (in order of first appearance) the heat maps are drawn on
n_maps: int = 3  # expressions of that image shown as heat maps
thresholds: list[float] = [0.3, 0.5, 0.7]  # the threshold sweep of the evaluation table
results_dir: str = ""  # folder of the <method>.json results files (empty: results/ of the book)
dataset: str = "refcocog"  # refcocog, refcoco or refcoco+ (the data root's dataset of the family)
split_by: str = ""  # whose split (empty: the dataset's usual one, umd for refcocog)

# %% tags=["remove-input"]
import torch

from refcocog_tools.engine.evaluate import group_by_image
from refcocog_tools.methods.gradcam import box_from_map
from refcocog_tools.report import chapter_answers as answers
from refcocog_tools.report import glue, glue_figure, glue_verdict, open_chapter
from refcocog_tools.report.figure_panels import heatmap_grid
from refcocog_tools.report.figures import metric_bar_chart, show_table

chapter = open_chapter(globals())
dataset = chapter.dataset
chapter.note

# %% [markdown]
# ## Evaluation
#
# The method as the study described it (a box from the thresholded map, no proposals) at a few
# thresholds, a variant that instead picks the proposal with the highest mean heat inside it
# (`snap_to_proposal`), and the crop-and-match baseline for reference. All rows are computed by
# this build; mean IoU and accuracy carry 95% intervals (bootstrap over images).
# {numref}`fig-gradcam-results` compares them.

# %% tags=["remove-input"]
runs = {f"gradcam, threshold {t}": chapter.evaluate("gradcam", threshold=t) for t in thresholds}
runs["gradcam, snap to proposal"] = chapter.evaluate("gradcam", threshold=threshold,
                                                     snap_to_proposal=True)
runs["baseline (crop and match)"] = chapter.evaluate("baseline")
if threshold in thresholds:
    chapter.save_results("gradcam", runs[f"gradcam, threshold {threshold}"])
table = answers.method_table(runs)
chart = table.assign(miou=[c.estimate for c in table["miou"]],
                     accuracy=[c.estimate for c in table["accuracy"]])
glue_figure("fig-gradcam-results", metric_bar_chart(chart, ("miou", "accuracy"),
                                                    intervals=answers.chart_intervals(runs)))
show_table(table, answers.method_caption(runs))

# %% [markdown]
# ```{glue:figure} fig-gradcam-results
# ---
# name: fig-gradcam-results
# alt: >-
#   Horizontal bars of mean IoU and accuracy for Grad-CAM at each threshold, snapped to a
#   proposal, and the baseline.
# ---
# Grad-CAM boxes at each threshold, snapped to the nearest proposal, and the crop-and-match
# baseline, with 95% intervals.
# ```

# %% tags=["remove-input"]
best = max(list(runs)[: len(thresholds)], key=lambda name: runs[name]["metrics"]["miou"])
glue("best_threshold_row", best)
glue("best_threshold_miou", runs[best]["metrics"]["miou"])
glue("snap_accuracy", runs["gradcam, snap to proposal"]["metrics"]["accuracy"])
glue("gradcam_baseline_accuracy", runs["baseline (crop and match)"]["metrics"]["accuracy"])
against_baseline = answers.comparison_answer(f"Grad-CAM ({best})", runs[best],
                                             "the crop baseline",
                                             runs["baseline (crop and match)"], metric="miou")
glue("gradcam_vs_baseline", against_baseline)
glue_verdict(
    "Does the box around CLIP's Grad-CAM heat map find the referred object as well as the crop "
    "baseline picks it?", against_baseline,
    "The study reported no number for Grad-CAM: after inspecting the maps of hundreds of test "
    "inputs it judged the boxes too imprecise and did not pursue the idea.")

# %% [markdown]
# In this run the best of the thresholds tried is *{glue:text}`best_threshold_row`* with a mean
# IoU of {glue:text}`best_threshold_miou:.3f`; paired with the baseline on the same
# expressions: {glue:text}`gradcam_vs_baseline` Snapped to a proposal, the map's choice
# reaches an accuracy of {glue:text}`snap_accuracy:.3f`, against
# {glue:text}`gradcam_baseline_accuracy:.3f` for the crop-and-match baseline on the same
# proposals. The study reported no number for Grad-CAM, only its judgement after inspecting
# the maps, so there is no reported row to compare with.

# %% [markdown]
# ## Heat maps
#
# The maps of a few expressions of one image, in `jet` colours over the image (red = high),
# with the box cut out of the map at the chosen threshold (red, dashed) and the ground truth
# (green). What a map can show depends on the weights: with untrained
# weights the gradient carries no meaning, and a small model's map is no finer than the grid of
# its last stage (2 x 2 for toy-rn's 64 px input), so its box is a block of that grid. Where
# the map is spread out the box covers most of the image.
# {numref}`fig-gradcam-maps` shows them.

# %% tags=["remove-input"]
groups = group_by_image(dataset, limit)
items = groups[min(image_index, len(groups) - 1)][:n_maps]
image = items[0].image
gradcam = chapter.run.make_method("gradcam", threshold=threshold)
heat = gradcam.heatmaps(image, [it.sentence for it in items])
boxes = torch.stack([box_from_map(h, threshold) for h in heat])
fig = heatmap_grid(image, heat, boxes, [it.box for it in items], [it.sentence for it in items])
glue_figure("fig-gradcam-maps", fig)

# %% [markdown]
# ```{glue:figure} fig-gradcam-maps
# ---
# name: fig-gradcam-maps
# alt: >-
#   Grad-CAM heat maps in jet colours over one image, one panel per expression, with the
#   thresholded box dashed in red and the ground truth in green.
# ---
# Grad-CAM maps of a few expressions of one image: the box cut from the map (red, dashed) and the
# ground truth (green).
# ```

# %% tags=["remove-input"]
glue("threshold", threshold)
glue("map_box_share", float(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).mean()
                            / (image.width * image.height)))

# %% [markdown]
# At threshold {glue:text}`threshold` the boxes above cover on average
# {glue:text}`map_box_share:.0%` of the image. A single box around *every* pixel above the
# threshold is the simplest rule; two separated hot spots give one box spanning both, one of
# the reasons the boxes are loose.

# %% [markdown]
# ## CLIPSeg: described, not run
#
# CLIPSeg keeps CLIP frozen and trains a small transformer decoder on activations taken from
# several of CLIP's layers, conditioned on the prompt's embedding, to output a segmentation
# mask; the box around the mask is a prediction without proposals. The study found its masks
# good at finding the object a prompt names, but unable to tell apart objects by position
# ("the left one"), which was the very weakness it wanted to fix, so it dropped the idea.
#
# This project does not run CLIPSeg: its decoder weights are a separate pretrained download
# (they are not part of OpenAI's CLIP checkpoints), the build runs offline, and an untrained
# decoder would produce noise, not a test of the idea. Nothing on this page is a CLIPSeg
# result.

# %% [markdown]
# ## Background
#
# The crop-and-match baseline decides among boxes someone else proposed. A different route is
# to ask CLIP itself *where* in the whole image the expression is: Grad-CAM differentiates
# the image-text similarity with respect to the last convolutional (or last transformer) stage
# of CLIP's image encoder, weights each feature channel by its average gradient, and keeps the
# positive part. The resulting heat map is large where the features that raise the similarity
# sit. Thresholding the map and taking the box around the pixels above the threshold gives a
# prediction that needs no proposals at all.
#
# The study tried this on a ViT backbone, inspected hundreds of maps and found the boxes too
# imprecise to pursue. This chapter drew a few maps with `refcocog_tools.methods.gradcam`, shows
# the
# boxes the threshold cuts out of them, and evaluates the method on the split so the finding
# can be rechecked with pretrained weights. CLIPSeg, the study's second idea of this kind, is
# described at the end but not run.
#
# ````{tip}
# **Running this chapter on real data** (RefCOCOg, umd split):
#
# ```bash
# OMP_NUM_THREADS=1 papermill \
#     notebooks/05_gradcam_clipseg.ipynb out.ipynb \
#     -p data_root /data/refcocog \
#     -p clip RN50x16 -p proposals yolov8s \
#     -p device cuda
# papermill --help-notebook notebooks/05_gradcam_clipseg.ipynb
# make book CHAPTERS=05_gradcam_clipseg
# ```
#
# ```{include} ../_real_data.md
# ```
# ````
