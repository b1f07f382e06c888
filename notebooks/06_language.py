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
# # The language of referring expressions
#
# ```{glue:md} verdict
# :format: myst
# ```

# %% tags=["parameters", "hide-input"]
data_root: str = ""  # empty: the embedded synthetic dataset (refcocog_tools.data.minidata)
clip: str = "toy-rn"  # unused here: this chapter runs no model
proposals: str = "gt"  # unused here
device: str = "cpu"  # unused here
limit: int = 0  # at most this many refs per split (0: all)
seed: int = 0  # which example parses are shown
top_words: int = 15  # rows of the word-frequency tables
n_parsed_examples: int = 8  # example parses shown
dataset: str = "refcocog"  # refcocog, refcoco or refcoco+ (the data root's dataset of the family)
split_by: str = ""  # whose split (empty: the dataset's usual one, umd for refcocog)

# %% tags=["remove-input"]
import matplotlib.pyplot as plt
import pandas as pd

from refcocog_tools.data.annotations import load_records
from refcocog_tools.data.language import (
    expression_table,
    parse_expression,
    relation_counts,
    word_frequencies,
)
from refcocog_tools.data.layouts import get_layout
from refcocog_tools.report import glue, glue_figure, glue_verdict, open_chapter
from refcocog_tools.report.figures import show_table

chapter = open_chapter(globals(), models=())
root = chapter.root
layout = get_layout(dataset, split_by or None)
evaluated = layout.default_split  # test, or val where the dataset has no test split
chapter.note

# %% tags=["remove-input"]
records = load_records(root, layout=layout)
if limit:
    records = [r for split in layout.splits
               for r in [x for x in records if x.split == split][:limit]]
table = expression_table(records)
test = table[table["split"] == evaluated]
glue("n_expressions", len(table))
glue("spatial_share", float(table["spatial"].mean()))
glue("test_spatial_share", float(test["spatial"].mean()) if len(test) else 0.0)
glue("evaluated_split", evaluated)
glue("median_words", float(table["n_words"].median()))
glue("head_is_category", float(table["head_is_category"].mean()))
glue("no_relation_share", float((table["n_relations"] == 0).mean()))
glue_verdict(
    "What would a parser of the expressions face: how many depend on position, how long are "
    "they, and how many name a relation?",
    f"{table['spatial'].mean():.1%} of the {len(table):,} expressions mention a position or a "
    f"relative size ({test['spatial'].mean() if len(test) else 0.0:.1%} on the {evaluated} "
    f"split); half have at most {table['n_words'].median():.0f} words, and "
    f"{(table['n_relations'] == 0).mean():.1%} hold no relation phrase the rule-based reader "
    "recognises.",
    "The study reported no numbers for this idea: it proposed parsing the expressions, named "
    "two obstacles (objects that differ only by position, expressions that are seldom complete "
    "sentences) and did not implement it.")

# %% [markdown]
# ## Spatial and non-spatial expressions
#
# An expression is *spatial* when it contains a word about position or relative size
# (`refcocog_tools.data.language.SPATIAL_WORDS`: left, right, top, behind, bigger, ...). In this run
# {glue:text}`spatial_share:.1%` of the {glue:text}`n_expressions` expressions are spatial
# ({glue:text}`test_spatial_share:.1%` on the {glue:text}`evaluated_split` split, the one the
# methods are evaluated on). These are the expressions a
# crop-and-match method is structurally unable to resolve when the image holds look-alikes.

# %% tags=["remove-input"]
spatial = (
    table.groupby("split", sort=False)
    .agg(expressions=("sentence", "size"), spatial=("spatial", "sum"),
         spatial_share=("spatial", "mean"), parsed_spatial_share=("parsed_spatial", "mean"))
)
show_table(spatial, "Spatial expressions per split (by the word list, and by the parser).")

# %% [markdown]
# {numref}`fig-spatial-by-category` shows the share of spatial expressions per category of
# the referred object.

# %% tags=["remove-input"]
by_category = (
    table.groupby("category")
    .agg(expressions=("sentence", "size"), spatial_share=("spatial", "mean"))
    .sort_values(["expressions", "spatial_share"], ascending=False, kind="stable")
    .round(3)
)
fig, ax = plt.subplots(figsize=(6, 3))
by_category["spatial_share"].plot.bar(ax=ax, rot=45, color="tab:orange")
ax.set_ylim(0, 1)
ax.set_ylabel("share of spatial expressions")
ax.set_title("spatial expressions per category of the referred object")
glue_figure("fig-spatial-by-category", fig)
show_table(by_category, "Spatial expressions per category of the referred object.")

# %% [markdown]
# ```{glue:figure} fig-spatial-by-category
# ---
# name: fig-spatial-by-category
# alt: >-
#   Bars of the share of spatial expressions for each category of referred object.
# ---
# Share of spatial expressions per category of the referred object.
# ```

# %% [markdown]
# ## Length
#
# Half of the expressions in this run have at most {glue:text}`median_words:.0f` words. Short
# phrases without a verb are the norm, which is one reason the study expected a
# general-purpose parser to struggle. {numref}`fig-expression-length` compares the lengths.

# %% tags=["remove-input"]
fig, ax = plt.subplots(figsize=(6, 3))
bins = range(int(table["n_words"].min()), int(table["n_words"].max()) + 2)
for flag, label in ((False, "non-spatial"), (True, "spatial")):
    ax.hist(table.loc[table["spatial"] == flag, "n_words"], bins=bins, alpha=0.6, label=label,
            align="left")
ax.set_xlabel("words in the expression")
ax.set_ylabel("expressions")
ax.legend()
ax.set_title("expression length")
glue_figure("fig-expression-length", fig)
lengths = table.groupby("spatial")["n_words"].describe()[["count", "mean", "50%", "max"]]
lengths.index = lengths.index.map({False: "non-spatial", True: "spatial"}).rename("expressions")
show_table(lengths.rename(columns={"count": "n", "50%": "median"}),
           "Expression length in words.")

# %% [markdown]
# ```{glue:figure} fig-expression-length
# ---
# name: fig-expression-length
# alt: >-
#   Histograms of expression length in words, spatial and non-spatial expressions overlaid.
# ---
# Expression length in words, spatial against non-spatial expressions.
# ```

# %% [markdown]
# ## What a parser would extract
#
# `parse_expression` takes the words before the first relation or clause as the *head phrase*
# and its last content word as the *head*, then collects each relation phrase ("left of",
# "next to", "holding", ...) with the words that follow it. A few parses:

# %% tags=["remove-input"]
examples = table.sample(n=min(n_parsed_examples, len(table)), random_state=seed)
rows = []
for sentence in examples["sentence"]:
    parsed = parse_expression(sentence)
    rows.append({
        "expression": sentence,
        "head phrase": " ".join(parsed.head_phrase),
        "head": parsed.head,
        "relations": "; ".join(f"{r.relation} -> {' '.join(r.phrase) or '(picture)'}"
                               for r in parsed.relations),
        "colours": ", ".join(parsed.colours),
    })
show_table(pd.DataFrame(rows), "A random sample of parsed expressions (the seed parameter).")

# %% [markdown]
# For {glue:text}`head_is_category:.1%` of the expressions the head word names the referred
# object's category (so a noun phrase could be matched to a detector label), and
# {glue:text}`no_relation_share:.1%` contain no relation phrase at all. The relation phrases
# found, and whether each is about position:

# %% tags=["remove-input"]
relations = relation_counts(table)
show_table(relations, "Relation phrases found, and whether each is about position.")

# %% [markdown]
# ## Words
#
# The most frequent content words (function words removed), over all expressions and split by
# whether the expression is spatial. {numref}`fig-frequent-words` lists the most frequent ones.

# %% tags=["remove-input"]
words = word_frequencies(table["sentence"], top=top_words)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.barh(words["word"][::-1], words["count"][::-1])
ax.set_xlabel("occurrences")
ax.set_title(f"{top_words} most frequent content words")
glue_figure("fig-frequent-words", fig)
show_table(pd.concat(
    {
        "spatial": word_frequencies(table.loc[table["spatial"], "sentence"], top=top_words)
        .reset_index(drop=True),
        "non-spatial": word_frequencies(table.loc[~table["spatial"], "sentence"], top=top_words)
        .reset_index(drop=True),
    },
    axis=1,
), "The most frequent content words of spatial and of non-spatial expressions.")

# %% [markdown]
# ```{glue:figure} fig-frequent-words
# ---
# name: fig-frequent-words
# alt: >-
#   Horizontal bars of the most frequent content words of the expressions.
# ---
# The most frequent content words of the expressions.
# ```

# %% [markdown]
# ## What this means for a parser-based method
#
# A parser-based grounding method would need, per expression: the head noun (to shortlist
# proposals by detector label or by CLIP similarity of the noun phrase), the colour and size
# modifiers attached to it, and the relation phrases with their own noun phrases (to relate the
# shortlisted proposal to others). The spatial relations among these are exactly what the
# scene graphs of the next chapter encode. On the embedded synthetic dataset all of this is easy
# by construction: its expressions come from a handful of templates. Real RefCOCOg expressions
# are longer, freer and often ungrammatical, so the shares above should be recomputed on real
# data before drawing any conclusion.

# %% [markdown]
# ## Background
#
# The original study proposed to read the expression before looking at the image: parse it
# into noun phrases and the relations between them, match each noun phrase to an object
# proposal, and let the relations decide between candidates. It did not implement the idea and
# named two obstacles: objects that differ only by position cannot be told apart once cropped,
# and the expressions are seldom complete sentences, which trips up off-the-shelf parsers.
#
# This chapter measured what such a parser would face on the data of this run: how many
# expressions depend on position, how long they are, what their head nouns and relation
# phrases are, and which words they use. It uses `refcocog_tools.data.language`, a small rule-based
# reader that needs no model: good enough for statistics, not a parser to ground with.
#
# ````{tip}
# **Running this chapter on real data** (RefCOCOg, umd split):
#
# ```bash
# OMP_NUM_THREADS=1 papermill \
#     notebooks/06_language.ipynb out.ipynb \
#     -p data_root /data/refcocog
# papermill --help-notebook notebooks/06_language.ipynb
# make book CHAPTERS=06_language
# ```
#
# ```{include} ../_real_data.md
# ```
# ````
