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
# # The dataset
#
# RefCOCOg pairs COCO photographs with *referring expressions*: free-form phrases written so
# that a reader can pick out exactly one object ("the dog lying next to the sofa"). The task of
# this report, visual grounding, is to return the bounding box of that object given the image
# and the expression. This chapter looks at the data a run uses: how large each split is, how
# crowded the images are, which categories are referred to, and what the expressions look like.
#
# ````{tip}
# **Running this chapter on real data** (RefCOCOg, umd split):
#
# ```bash
# OMP_NUM_THREADS=1 papermill \
#     notebooks/01_dataset.ipynb out.ipynb \
#     -p data_root /data/refcocog
# papermill --help-notebook notebooks/01_dataset.ipynb
# make book CHAPTERS=01_dataset
# ```
#
# ```{include} ../_real_data.md
# ```
# ````

# %% tags=["parameters", "hide-input"]
data_root: str = ""  # empty: the embedded synthetic dataset (refcocog_tools.data.minidata)
clip: str = "toy-rn"  # unused here: this chapter runs no model
proposals: str = "gt"  # unused here
device: str = "cpu"  # unused here
limit: int = 0  # at most this many refs per split in the per-ref tables and figures (0: all)
seed: int = 0  # which examples the grid shows
n_examples: int = 6  # images in the example grid
dataset: str = "refcocog"  # refcocog, refcoco or refcoco+ (the data root's dataset of the family)
split_by: str = ""  # whose split (empty: the dataset's usual one, umd for refcocog)

# %% tags=["remove-input"]
import random
import textwrap
from collections import Counter

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.patches import Rectangle

from refcocog_tools.data.annotations import load_records
from refcocog_tools.data.dataset import load_rgb_image, split_stats
from refcocog_tools.data.layouts import get_layout
from refcocog_tools.report import glue, glue_figure, open_chapter
from refcocog_tools.report.figures import show_table

chapter = open_chapter(globals(), models=())
root = chapter.root
layout = get_layout(dataset, split_by or None)  # RefCOCO's unc split has testA and testB
evaluated = layout.default_split  # test, or val where the dataset has no test split
chapter.note

# %% [markdown]
# ## Splits
#
# The umd partition of RefCOCOg splits by image, so no image appears in two splits. The table
# counts, per split, the referred objects (*refs*), their expressions, the images, the average
# number of annotated objects per image (every one a possible distractor), the share of
# expressions that contain a word about position or relative size, and the categories of the
# referred objects.

# %% tags=["hide-input"]
stats = pd.DataFrame(split_stats(root, layout=layout)).T
for column in ("refs", "expressions", "images", "categories"):
    stats[column] = stats[column].astype(int)
show_table(stats, "Computed here from this run's data root (see the box at the top).")

# %% tags=["remove-input"]
records = load_records(root, layout=layout)
by_split = {split: [r for r in records if r.split == split] for split in layout.splits}
if limit:
    by_split = {split: recs[:limit] for split, recs in by_split.items()}

glue("n_images", int(stats["images"].sum()))
glue("n_refs", int(stats["refs"].sum()))
glue("n_expressions", int(stats["expressions"].sum()))
glue("evaluated_split", evaluated)
glue("test_expressions", int(stats.loc[evaluated, "expressions"]))
glue("test_spatial_share", float(stats.loc[evaluated, "spatial_share"]))
glue("mean_objects", float(stats["objects_per_image"].mean()))

# %% [markdown]
# In this run the data holds {glue:text}`n_images` images, {glue:text}`n_refs` referred
# objects and {glue:text}`n_expressions` expressions; {glue:text}`test_expressions` of them
# are in the {glue:text}`evaluated_split` split, the one every method of this report is
# evaluated on (test, or val where a dataset has no test split). A share of
# {glue:text}`test_spatial_share:.1%` of those expressions mention a position or a relative
# size: cropping a proposal out of the image, as the baseline does, throws exactly that
# information away.

# %% [markdown]
# ## Examples
#
# A few images of the evaluated split with the referred object's ground-truth box (red, with
# its expressions above the image) and every other annotated object (dashed white): the other
# objects are what a method must rule out. {numref}`fig-examples` shows a few of them.

# %% tags=["remove-input"]
test_refs = by_split[evaluated] or records
rng = random.Random(seed)
shown = rng.sample(test_refs, k=min(n_examples, len(test_refs)))
columns = 2  # two per row keep the expressions legible at page width
rows = (len(shown) + columns - 1) // columns
fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4.6 * rows), squeeze=False)
for ax in axes.flat:
    ax.set_axis_off()
for ax, record in zip(axes.flat, shown, strict=False):
    ax.imshow(load_rgb_image(record.image_path))
    for inst in record.instances:
        if inst.ann_id == record.ann_id:
            continue
        x1, y1, x2, y2 = inst.box
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white",
                               linestyle="--", linewidth=1))
    x1, y1, x2, y2 = record.box
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linewidth=2))
    title = "\n".join(textwrap.shorten(s, 40) for s in record.sentences[:3])
    ax.set_title(f"[{record.category}]\n{title}", fontsize=11)
fig.tight_layout()
glue_figure("fig-examples", fig)

# %% [markdown]
# ```{glue:figure} fig-examples
# ---
# name: fig-examples
# alt: >-
#   A grid of images of the evaluated split, each with the referred object outlined in red,
#   other annotated objects dashed in white, and its category and expressions as the title.
# ---
# Example referred objects of the evaluated split: the referred object in red, every other annotated
# object (a possible distractor) dashed in white; the title gives the category and up to three
# expressions.
# ```

# %% [markdown]
# ## How crowded are the images?
#
# Every annotated object of an image is a candidate a method has to reject. The histogram
# counts, per split, how many annotated objects the images hold. {numref}`fig-objects-per-image`
# draws the distribution.

# %% tags=["hide-input"]
objects = pd.DataFrame(
    [{"split": split, "image_id": r.image_id, "objects": len(r.instances)}
     for split, recs in by_split.items() for r in recs]
).drop_duplicates(["split", "image_id"])
counts = objects.groupby(["objects", "split"]).size().unstack("split", fill_value=0)
counts = counts.reindex(columns=[s for s in layout.splits if s in counts.columns])
fig, ax = plt.subplots(figsize=(6, 3))
counts.plot.bar(ax=ax, rot=0)
ax.set_xlabel("annotated objects in the image")
ax.set_ylabel("images")
ax.set_title("objects per image")
glue_figure("fig-objects-per-image", fig)
show_table(counts, "Computed here from this run's data root (see the box at the top).")

# %% [markdown]
# ```{glue:figure} fig-objects-per-image
# ---
# name: fig-objects-per-image
# alt: >-
#   A histogram of the number of annotated objects per image, one colour per split.
# ---
# Annotated objects per image, per split (computed here from this run's data root).
# ```

# %% [markdown]
# ## Categories
#
# Which categories the referred objects belong to, per split. A grounding method that only
# recognised the category would fail whenever the image holds two objects of it, and the
# expression then has to say which one. {numref}`fig-categories` counts them.

# %% tags=["hide-input"]
categories = pd.DataFrame(
    {split: Counter(r.category for r in recs) for split, recs in by_split.items()}
).fillna(0).astype(int)
categories = categories.loc[categories.sum(axis=1).sort_values(ascending=False, kind="stable")
                            .index]
twins = sum(
    1 for recs in by_split.values() for r in recs
    if sum(inst.category_id == r.category_id for inst in r.instances) > 1
)
n_listed = sum(len(recs) for recs in by_split.values())
glue("share_with_twin", twins / n_listed if n_listed else 0.0)
fig, ax = plt.subplots(figsize=(6, 3))
categories.plot.barh(ax=ax, stacked=True)
ax.invert_yaxis()
ax.set_xlabel("referred objects")
ax.set_title("categories of the referred objects")
glue_figure("fig-categories", fig)
show_table(categories, "Computed here from this run's data root (see the box at the top).")

# %% [markdown]
# ```{glue:figure} fig-categories
# ---
# name: fig-categories
# alt: >-
#   Horizontal bars counting the referred objects of each category.
# ---
# Categories of the referred objects (computed here from this run's data root).
# ```

# %% [markdown]
# For {glue:text}`share_with_twin:.1%` of the referred objects the image holds at least one
# other object of the same category, so the category alone cannot identify them.
#
# ## Expressions per object
#
# Each referred object carries one or more expressions, written independently. Methods are
# evaluated per expression (each expression is one test sample).

# %% tags=["hide-input"]
per_ref = pd.DataFrame(
    [{"split": split, "expressions": len(r.sentences)} for split, recs in by_split.items()
     for r in recs]
)
per_ref.groupby("split", sort=False)["expressions"].describe()[["count", "mean", "min", "max"]]
