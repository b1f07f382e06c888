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
# # Spatial scene graphs
#
# ```{glue:md} verdict
# :format: myst
# ```

# %% tags=["parameters", "hide-input"]
data_root: str = ""  # empty: the embedded synthetic dataset (refcocog_tools.data.minidata)
clip: str = "toy-rn"  # unused here: this chapter runs no model
proposals: str = "gt"  # the graph is built on the ground-truth boxes of each image
device: str = "cpu"  # unused here
limit: int = 0  # at most this many expressions (evaluated split) in the resolution check (0: all)
seed: int = 0
image_index: int = 0  # which image of the evaluated split (in order of first appearance) is drawn
margin: float = 0.0  # pixels: centroids closer than this along an axis are in neither order
dataset: str = "refcocog"  # refcocog, refcoco or refcoco+ (the data root's dataset of the family)
split_by: str = ""  # whose split (empty: the dataset's usual one, umd for refcocog)

# %% tags=["remove-input"]
import matplotlib.pyplot as plt
import pandas as pd

from refcocog_tools.data.layouts import get_layout
from refcocog_tools.engine.uncertainty import format_interval, intervals
from refcocog_tools.methods.relations.scene_graph import (
    RELATIONS,
    build_scene_graph,
    draw_scene_graph,
    plot_relation_heatmap,
    position_answers,
)
from refcocog_tools.report import glue, glue_figure, glue_verdict, open_chapter
from refcocog_tools.report.figures import show_table

chapter = open_chapter(globals(), models=())
root = chapter.root
evaluated = get_layout(dataset, split_by or None).default_split  # test, else val
chapter.note

# %% [markdown]
# ## What the graph decides on its own
#
# Without any learning, the graph can already answer one family of expressions: those naming a
# category and an extreme position ("the cat on the left", "the bottle at the top"). Take the
# nodes of the referred object's category (ground-truth labels here), read the first position
# word of the expression, and return the candidate in that relation to every other candidate.
# Expressions without such a word, or whose candidates have no extreme (a "middle" object),
# get no answer: that is where a learned model would have to take over.

# %% tags=["remove-input"]
test_items = chapter.open_split(evaluated)
resolution = pd.DataFrame(position_answers(test_items, limit, margin))
summary = (
    resolution.groupby("position_word")
    .agg(expressions=("sentence", "size"), answered=("answered", "mean"),
         correct=("correct", "mean"))
    .round(3)
)
with_word = resolution[resolution["position_word"]]
glue("resolved_share", float(with_word["correct"].mean()) if len(with_word) else 0.0)
glue("position_word_share", float(resolution["position_word"].mean()))
summary.index = summary.index.map({False: "no", True: "yes"}).rename("position word")
# The verdict box at the top; the interval resamples images (95%, bootstrap).
resolved = intervals([{"iou": float(r["correct"]), "image_id": r["image_id"]}
                      for r in with_word.to_dict("records")])
glue_verdict(
    "Can the scene graph alone, with no learning, pick the referred object of an expression "
    "that names its category and an extreme position?",
    f"{len(with_word):,} of the {len(resolution):,} expressions of the {evaluated} split hold a "
    "position word the graph reads; for "
    + (f"{format_interval(resolved['accuracy'])} of them (95% interval over images)"
       if resolved else "none of them")
    + " the graph alone, on ground-truth boxes and labels, returns the referred object.",
    "The study built the graph (an m x m adjacency matrix of the four relations over the "
    "proposals) and reported no number: its graph network was never trained.")
show_table(summary, "What the graph alone answers, by whether the expression holds a position "
           "word it reads (shares of the expressions).")

# %% [markdown]
# On this run's expressions of the evaluated split, {glue:text}`position_word_share:.1%`
# contain a position word the graph understands, and for {glue:text}`resolved_share:.1%` of
# those the graph alone, on ground-truth boxes and labels, returns the referred object. On the
# embedded synthetic dataset this is high by construction (its expressions are generated from
# exactly these relations), so it demonstrates the mechanism, not its value on RefCOCOg, where
# expressions combine position with appearance and relations to other objects, and proposals
# come from a detector.
# The study's planned graph network, which would weigh such relations against CLIP's reading of
# the expression, is not built here either.

# %% [markdown]
# ## The graph of one image
#
# The nodes are the annotated objects of an image of the evaluated split (test, or val where
# a dataset has none); their labels are the ground-truth
# categories, standing in for a detector's labels.

# %% tags=["remove-input"]
refs = chapter.open_split(evaluated, view="ref")
image_ids = refs.image_ids
image_id = image_ids[image_index % len(image_ids)]
item = next(refs[i] for i in range(len(refs)) if refs[i].image_id == image_id)
boxes = [inst.box for inst in item.instances]
labels = [inst.category for inst in item.instances]
graph = build_scene_graph(boxes, item.image_size, labels, margin=margin)
referred = next(i for i, inst in enumerate(item.instances) if inst.ann_id == item.ann_id)
glue("n_nodes", len(graph))
glue("n_edges", len(graph.edges()))
show_table(pd.DataFrame({"expression": item.sentences}),
           f"The expressions of the referred object: node {referred} ({labels[referred]}).")

# %% [markdown]
# The graph has {glue:text}`n_nodes` nodes and {glue:text}`n_edges` directed edges over the
# four relations. Each panel below draws the edges of one relation over the image: an arrow
# from *i* to *j* means *i* is in that relation to *j*. The referred object is outlined in red.
# {numref}`fig-scene-graph` draws them.

# %% tags=["remove-input"]
# Two by two, so that each panel keeps half the page width and its labels stay legible.
fig, axes = plt.subplots(2, 2, figsize=(9, 7.6))
for ax, relation in zip(axes.flat, RELATIONS, strict=True):
    draw_scene_graph(ax, item.image, graph, relation=relation, highlight=referred, fontsize=13)
fig.tight_layout()
glue_figure("fig-scene-graph", fig)

# %% [markdown]
# ```{glue:figure} fig-scene-graph
# ---
# name: fig-scene-graph
# alt: >-
#   Four panels of the same image with numbered, labelled boxes and arrows for the edges of one
#   relation each: left of, right of, above, below.
# ---
# The scene graph of one image of the evaluated split, one relation per panel: an arrow from
# i to j means i is in that relation to j; the referred object is outlined in red (computed
# from the ground-truth boxes).
# ```

# %% [markdown]
# ## The adjacency matrices
#
# The study encoded each edge as one number. Here the four relations are bit flags
# (left of = 1, right of = 2, above = 4, below = 8), so one integer per ordered pair keeps all
# of them: a code of 5 means *left of and above*. Beside it, a weighted adjacency whose weight
# grows as two centroids get closer (1 minus their distance over the image diagonal), the kind
# of edge weight a graph network could use to favour near neighbours. {numref}`fig-adjacency`
# shows both.

# %% tags=["remove-input"]
fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
plot_relation_heatmap(axes[0], graph, matrix="codes")
plot_relation_heatmap(axes[1], graph, matrix="weights")
fig.tight_layout()
glue_figure("fig-adjacency", fig)
show_table(graph.to_frame(), "The edges of the image drawn above, one row per ordered pair.")

# %% [markdown]
# ```{glue:figure} fig-adjacency
# ---
# name: fig-adjacency
# alt: >-
#   Two matrices over the image's objects: integer edge codes with their values written in, and
#   closeness weights in colour.
# ---
# The graph as matrices: the edge code of every ordered pair (bit flags of the four relations) and
# the closeness weight.
# ```

# %% [markdown]
# ## Background
#
# The study's fifth idea was to describe the layout of a scene explicitly: one node per object
# proposal and, for every ordered pair of proposals, an edge that says whether the first lies
# left of, right of, above or below the second, computed from the box centroids and stored as
# a number in an m x m adjacency matrix. A graph neural network would then learn to pick the
# node an expression refers to, given CLIP's embedding of the expression. The study built the
# graph and stopped there, for lack of compute and because it expected the graph to help only
# with spatial expressions.
#
# This chapter built the graph with `refcocog_tools.methods.relations.scene_graph` on the
# ground-truth boxes of
# an image (so the proposals are perfect and the graph is the only thing under test), draws it
# over the image and as a heatmap, and checks what the graph can decide on its own, without
# any learning: for expressions of the form "the *category* on the left / right / at the top /
# at the bottom", the candidate of that category that lies in that relation to all the others.
#
# ````{tip}
# **Running this chapter on real data** (RefCOCOg, umd split):
#
# ```bash
# OMP_NUM_THREADS=1 papermill \
#     notebooks/07_scene_graph.ipynb out.ipynb \
#     -p data_root /data/refcocog
# papermill --help-notebook notebooks/07_scene_graph.ipynb
# make book CHAPTERS=07_scene_graph
# ```
#
# ```{include} ../_real_data.md
# ```
# ````
