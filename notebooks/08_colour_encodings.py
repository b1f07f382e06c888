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
# # Encoding position in colour
#
# ```{glue:md} verdict
# :format: myst
# ```

# %% tags=["parameters", "hide-input"]
data_root: str = ""  # empty: the embedded synthetic dataset (refcocog_tools.data.minidata)
clip: str = "toy-rn"  # CLIP backbone(s), comma-separated for an ensemble
proposals: str = "gt"  # "gt" (ground-truth boxes) or a YOLO model
device: str = "cpu"
limit: int = 0  # evaluate the first N expressions of the split (0: all)
seed: int = 0
split: str = "test"
image_index: int = 0  # which image (in order of first appearance) the prompts are drawn for
n_expressions: int = 4  # spatial expressions in the table of augmented prompts
results_dir: str = ""  # folder of the <method>.json results files (empty: results/ of the book)
dataset: str = "refcocog"  # refcocog, refcoco or refcoco+ (the data root's dataset of the family)
split_by: str = ""  # whose split (empty: the dataset's usual one, umd for refcocog)

# %% tags=["remove-input"]
import pandas as pd

from refcocog_tools.data.language import is_spatial
from refcocog_tools.engine.evaluate import group_by_image
from refcocog_tools.methods.colour_encodings import (
    KEYWORD_COLOURS,
    LUT_GRID,
    LUT_RGB,
    LUT_X_CUTS,
    LUT_Y_CUTS,
    colour_prompts,
    lut_colour,
    overlay_prompt,
    overlay_side,
    paint_background,
    tint_crop,
)
from refcocog_tools.report import chapter_answers as answers
from refcocog_tools.report import glue, glue_figure, glue_verdict, open_chapter
from refcocog_tools.report.figure_panels import lut_figure, side_by_side
from refcocog_tools.report.figures import metric_bar_chart, show_table
from refcocog_tools.report.reported import reported_value

chapter = open_chapter(globals())
dataset, proposer = chapter.dataset, chapter.proposer
runs = {name: chapter.evaluate(name) for name in ("baseline", "color-background", "color-overlay")}
for name in ("color-background", "color-overlay"):
    chapter.save_results(name, runs[name])
chapter.note

# %% [markdown]
# ## Evaluation
#
# Both encodings against the crop-and-match baseline, with the same proposals and backbones,
# and the study's reported numbers for the baseline and for the colour-coded background. The
# study described the latter only in prose ("an average IoU of about 0.54"), without saying
# on which split or with which backbone; the `method` column of the reported rows says
# "not stated" there. The `numbers` column tells the two kinds of rows apart.
# {numref}`fig-colour-results` compares them.

# %% tags=["remove-input"]
table, caption = answers.study_and_build_table(["baseline", "colour_background"], runs)
computed = answers.method_table(runs)
chart = computed.assign(miou=[c.estimate for c in computed["miou"]],
                        accuracy=[c.estimate for c in computed["accuracy"]])
glue_figure("fig-colour-results", metric_bar_chart(chart, ("miou", "accuracy"),
                                                   intervals=answers.chart_intervals(runs)))
show_table(table, caption)

# %% [markdown]
# ```{glue:figure} fig-colour-results
# ---
# name: fig-colour-results
# alt: >-
#   Horizontal bars of mean IoU and accuracy for the baseline and the two colour encodings.
# ---
# The colour encodings against the baseline, with 95% intervals.
# ```

# %% tags=["remove-input"]
glue("reported_colour_miou", reported_value("colour_background", "miou", split="not stated"))
glue("reported_baseline_miou", reported_value("baseline", "miou"))
for name, doc in runs.items():
    glue(f"{name.replace('-', '_')}_miou", doc["metrics"]["miou"])
    spatial_miou = doc["metrics"]["by_spatial"]["spatial"]["miou"]
    glue(f"{name.replace('-', '_')}_spatial_miou", spatial_miou or 0.0)
sentences = {}
for name in ("color-background", "color-overlay"):
    sentences[name] = answers.comparison_answer(name, runs[name], "the baseline",
                                                runs["baseline"], metric="miou")
    if any(is_spatial(row["sentence"]) for row in runs["baseline"]["predictions"]):
        sentences[f"{name} spatial"] = answers.comparison_answer(
            name, runs[name], "the baseline", runs["baseline"], metric="miou",
            subset=lambda row: is_spatial(row["sentence"]))
    else:
        sentences[f"{name} spatial"] = "There are no spatial expressions to compare on."
glue("background_vs_baseline", sentences["color-background"])
glue("overlay_vs_baseline", sentences["color-overlay"])
glue("background_vs_baseline_spatial", sentences["color-background spatial"])
glue_verdict(
    "Does painting a proposal's position into its picture as a colour, and naming that colour "
    "in the expression, beat the crop baseline?",
    f"{sentences['color-background']} On the spatial expressions alone, the ones the encoding "
    f"is for: {sentences['color-background spatial']} The tinted crops: "
    f"{sentences['color-overlay']}",
    "The study reported, for its " + answers.study_report("colour_background",
                                                          split="not stated")
    + " Its baseline: " + answers.study_report("baseline", metrics=("miou",),
                                               split="not stated"))

# %% [markdown]
# The study reported about {glue:text}`reported_colour_miou` mean IoU for the colour-coded
# background against {glue:text}`reported_baseline_miou` for its baseline, a small gain, and
# moved on. In this run the baseline, colour-background and colour-overlay methods reach a
# mean IoU of {glue:text}`baseline_miou:.3f`, {glue:text}`color_background_miou:.3f` and
# {glue:text}`color_overlay_miou:.3f` ({glue:text}`baseline_spatial_miou:.3f`,
# {glue:text}`color_background_spatial_miou:.3f` and
# {glue:text}`color_overlay_spatial_miou:.3f` on the spatial expressions alone). Paired on the
# same expressions: {glue:text}`background_vs_baseline` On the spatial expressions:
# {glue:text}`background_vs_baseline_spatial` The tinted crops: {glue:text}`overlay_vs_baseline`
#
# Two limits of the idea are visible without any numbers. The painted background removes the
# context the crop lost anyway, so relations to *other* objects ("next to the sofa") stay
# out of reach; and a colour name in the prompt helps only if CLIP links a coloured frame to
# that word: nothing in the toy CLIP's training pairs (chapter 12) teaches that, and nothing
# shows that a web-trained CLIP has learnt it.

# %% [markdown]
# ## The look-up table
#
# The colour of a proposal is read from the cell that holds its centre, in coordinates
# normalised by the image's width and height. The cuts are the study's: they are not thirds,
# the middle column is narrower (0.35 to 0.65). {numref}`fig-lut` draws it.

# %% tags=["remove-input"]
glue_figure("fig-lut", lut_figure(LUT_GRID, LUT_RGB, LUT_X_CUTS, LUT_Y_CUTS))

# %% [markdown]
# ```{glue:figure} fig-lut
# ---
# name: fig-lut
# alt: >-
#   A three by three grid over the unit square, each cell filled with its colour and named, the
#   middle column narrower.
# ---
# The study's colour look-up table: the colour of a proposal is that of the cell holding its
# centre.
# ```

# %% [markdown]
# ## The visual prompts of one image
#
# Every proposal of one image, first with its background painted in its cell's colour (what
# the colour-background method embeds), then as a tinted crop (what the colour-overlay method
# embeds). The titles name the colour or the side. {numref}`fig-colour-backgrounds` shows the
# painted backgrounds and {numref}`fig-colour-overlays` the tinted crops.

# %% tags=["remove-input"]
groups = group_by_image(dataset, limit)
items = groups[min(image_index, len(groups) - 1)]
image = items[0].image
boxes = proposer(items[0]).boxes
painted = [paint_background(image, box) for box in boxes]
glue_figure("fig-colour-backgrounds",
            side_by_side(painted, [lut_colour(box, image.size)[0] for box in boxes], width=2.4,
                         columns=min(4, len(painted))))

# %% [markdown]
# ```{glue:figure} fig-colour-backgrounds
# ---
# name: fig-colour-backgrounds
# alt: >-
#   One framed panel per proposal of one image, with the background painted in the proposal's
#   colour, titled with the colour's name.
# ---
# Every proposal of one image with its background painted in its cell's colour, as the
# colour-background method embeds it; each panel is framed so that a white background stays
# visible.
# ```

# %% tags=["remove-input"]
tinted = [tint_crop(image, box) for box in boxes]
glue_figure("fig-colour-overlays",
            side_by_side(tinted, [overlay_side(box, image.size) for box in boxes], width=1.8,
                         columns=min(6, len(tinted))))

# %% [markdown]
# ```{glue:figure} fig-colour-overlays
# ---
# name: fig-colour-overlays
# alt: >-
#   One framed panel per proposal crop, tinted by side, titled with the side.
# ---
# The same proposals as tinted crops, as the colour-overlay method embeds them.
# ```

# %% [markdown]
# ## The augmented expressions
#
# What the text side becomes, for a few spatial expressions of the split. The colour prompts
# come in pairs per colour of the column or row the keyword points at; the plain expression
# is always kept as the first prompt.

# %% tags=["remove-input"]
keywords = set(KEYWORD_COLOURS)
spatial = [it.sentence for group in groups for it in group
           if keywords & set(it.sentence.lower().split())][:n_expressions]
prompt_table = pd.DataFrame([
    {"expression": s, "colour prompts": len(colour_prompts(s)),
     "examples of colour prompts": " | ".join(colour_prompts(s)[1:3]),
     "overlay prompt": overlay_prompt(s)}
    for s in spatial
], columns=["expression", "colour prompts", "examples of colour prompts", "overlay prompt"])
show_table(prompt_table, "Computed here for the image drawn above.")

# %% [markdown]
# ## Background
#
# A crop forgets where it came from. The study noticed that CLIP tells objects apart by colour
# quite reliably (a light and a dark teddy bear), and tried to turn position *into* colour, so
# that the crop carries it again and the expression can ask for it:
#
# * **Colour-coded background** (the study's section 6.1.1). The image is divided into a 3 x 3
#   grid; each proposal is shown in place, full image size, with everything outside its
#   rectangle painted in the colour of the grid cell that holds the proposal's centre. An
#   expression that says *left*, *right*, *above* or *below* is augmented with the colours of
#   the matching column or row ("... The image has a blue background", "blue. ..."), and each
#   expression scores a proposal by its best prompt.
# * **Tinted crops** (section 6.1.2). Each crop is tinted red if its centre lies in the left
#   half of the image and green if in the right half; an expression with *left* (or *right*)
#   gets " with a red overlay" (or green).
#
# Both are implemented in `refcocog_tools.methods.colour_encodings` (the pictures, the prompts and
# both
# methods), on the crops of `refcocog_tools.prompts.visual_prompts`.
#
# ````{tip}
# **Running this chapter on real data** (RefCOCOg, umd split):
#
# ```bash
# OMP_NUM_THREADS=1 papermill \
#     notebooks/08_colour_encodings.ipynb out.ipynb \
#     -p data_root /data/refcocog \
#     -p clip RN50x16 -p proposals yolov8s \
#     -p device cuda
# papermill --help-notebook notebooks/08_colour_encodings.ipynb
# make book CHAPTERS=08_colour_encodings
# ```
#
# ```{include} ../_real_data.md
# ```
# ````
