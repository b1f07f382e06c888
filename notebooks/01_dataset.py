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
# ```{glue:md} verdict
# :format: myst
# ```

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
from collections import Counter

import matplotlib.pyplot as plt
import pandas as pd

from refcocog_tools.data.annotations import load_records
from refcocog_tools.data.dataset import split_stats
from refcocog_tools.data.layouts import get_layout
from refcocog_tools.report import glue, glue_figure, glue_verdict, open_chapter
from refcocog_tools.report.figure_panels import annotated_examples
from refcocog_tools.report.figures import show_table

chapter = open_chapter(globals(), models=())
layout = get_layout(dataset, split_by or None)  # RefCOCO's unc split has testA and testB
evaluated = layout.default_split  # test, or val where the dataset has no test split
records = load_records(chapter.root, layout=layout)
by_split = {split: [r for r in records if r.split == split][:limit or None]
            for split in layout.splits}
chapter.note

# %% [markdown]
# ## Splits
#
# The umd partition of RefCOCOg splits by image, so no image appears in two splits. The table
# counts, per split, the referred objects (*refs*), their expressions, the images, the average
# number of annotated objects per image (every one a possible distractor), the share of
# expressions that contain a word about position or relative size, and the categories of the
# referred objects.

# %% tags=["remove-input"]
stats = pd.DataFrame(split_stats(chapter.root, layout=layout)).T
for column in ("refs", "expressions", "images", "categories"):
    stats[column] = stats[column].astype(int)
show_table(stats, "Refs, expressions and images per split.")

# %% tags=["remove-input"]
glue("n_images", int(stats["images"].sum()))
glue("n_refs", int(stats["refs"].sum()))
glue("n_expressions", int(stats["expressions"].sum()))
glue("evaluated_split", evaluated)
glue("test_expressions", int(stats.loc[evaluated, "expressions"]))
glue("test_spatial_share", float(stats.loc[evaluated, "spatial_share"]))
glue("mean_objects", float(stats["objects_per_image"].mean()))

# %% [markdown]
# In this run the data holds {glue:text}`n_images:,` images, {glue:text}`n_refs:,` referred
# objects and {glue:text}`n_expressions:,` expressions; {glue:text}`test_expressions:,` of them
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
shown = random.Random(seed).sample(test_refs, k=min(n_examples, len(test_refs)))
glue_figure("fig-examples", annotated_examples(shown, columns=2))

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

# %% tags=["remove-input"]
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
glue_figure("fig-objects-per-image", fig)
show_table(counts, "Images per count of annotated objects, per split.")

# %% [markdown]
# ```{glue:figure} fig-objects-per-image
# ---
# name: fig-objects-per-image
# alt: >-
#   A histogram of the number of annotated objects per image, one colour per split.
# ---
# Annotated objects per image, per split.
# ```

# %% [markdown]
# ## Categories
#
# Which categories the referred objects belong to, per split. A grounding method that only
# recognised the category would fail whenever the image holds two objects of it, and the
# expression then has to say which one. {numref}`fig-categories` counts them.

# %% tags=["remove-input"]
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
glue_figure("fig-categories", fig)
show_table(categories, "Referred objects per category and split.")

# %% [markdown]
# ```{glue:figure} fig-categories
# ---
# name: fig-categories
# alt: >-
#   Horizontal bars counting the referred objects of each category.
# ---
# Categories of the referred objects, per split.
# ```

# %% [markdown]
# For {glue:text}`share_with_twin:.1%` of the referred objects the image holds at least one
# other object of the same category, so the category alone cannot identify them.
#
# ## Expressions per object
#
# Each referred object carries one or more expressions, written independently. Methods are
# evaluated per expression (each expression is one test sample).

# %% tags=["remove-input"]
per_ref = pd.DataFrame(
    [{"split": split, "expressions": len(r.sentences)} for split, recs in by_split.items()
     for r in recs]
)
described = per_ref.groupby("split", sort=False)["expressions"].describe()
show_table(described[["count", "mean", "min", "max"]].rename(columns={"count": "refs"}),
           "Expressions per referred object, per split.")

# %% tags=["remove-input"]
# The verdict box at the top: generated from the numbers above.
evaluated_refs = by_split[evaluated]
twins_evaluated = sum(sum(i.category_id == r.category_id for i in r.instances) > 1
                      for r in evaluated_refs)
glue_verdict(
    "How much of the evaluated split can a crop of the referred object not settle on its own?",
    f"{stats.loc[evaluated, 'spatial_share']:.1%} of the "
    f"{int(stats.loc[evaluated, 'expressions']):,} expressions of the {evaluated} split mention "
    f"a position or a relative size, which a crop throws away, and "
    f"{twins_evaluated / max(len(evaluated_refs), 1):.1%} of its "
    f"{len(evaluated_refs):,} referred objects share their image with another object of their "
    "category, which the category alone cannot tell apart.",
    "The study reported no statistics of the data; it used RefCOCOg's umd split "
    "(refs(umd).p).")

# %% [markdown]
# ## Background
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
