"""The dataset card (README.md) written next to a saved fashion-scenes build."""

from __future__ import annotations

import json

LAYOUT_TEXT = {
    "objects": ("Each {cs}x{cs} canvas is a random crop of a real photograph, with 2-4 real Fashion-MNIST product "
                "photos pasted on it (random scale, colour tint, flip and position; later items occlude earlier ones). "
                "A mask pixel holds the class id of the item whose filled silhouette (grayscale > {t}, holes filled) "
                "covers it, else 0."),
    "mosaic": ("Each {cs}x{cs} canvas is tiled by 10-30 touching regions (a weighted Voronoi diagram). A region of a "
               "garment class is filled with a tiling of Fashion-MNIST photos of that class, a region of class 0 with "
               "a grayscale crop of a photograph; every region has the canvas's mean intensity and a contrast and tint "
               "from banks shared by all classes, so only texture statistics over a region tell its class. A mask "
               "pixel holds the class of its region."),
}


def dataset_card(params: dict, *, version: int, id2label: dict, train_backgrounds: tuple, eval_backgrounds: tuple,
                 threshold: int) -> str:
    """The README.md dataset card of a saved fashion-scenes build with parameters `params`."""
    SCENES_VERSION, FASHION_SCENES_ID2LABEL, SILHOUETTE_THRESHOLD = version, id2label, threshold
    TRAIN_BACKGROUNDS, EVAL_BACKGROUNDS = train_backgrounds, eval_backgrounds
    n = params["num_train"] + params["num_validation"] + params["num_test"]
    size = "n<1K" if n < 1000 else "1K<n<10K" if n < 10000 else "10K<n<100K"
    classes = "\n".join(f"| {k} | {v} |" for k, v in FASHION_SCENES_ID2LABEL.items())
    return f"""---
pretty_name: fashion-scenes
license: other
task_categories:
- image-segmentation
task_ids:
- semantic-segmentation
size_categories:
- {size}
tags:
- composed
- fashion-mnist
- lad_hf
---

# fashion-scenes

Semantic segmentation scenes built by `lad_hf.fashion_scenes` (version {SCENES_VERSION}) with
`{json.dumps(params)}`.

**Layouts and masks are composed; pixels are real.** {LAYOUT_TEXT[params.get('layout', 'objects')].format(cs=params['canvas_size'], t=SILHOUETTE_THRESHOLD)}
These are not natural scenes: no lighting, perspective or context.

Splits: `train` ({params['num_train']}) uses Fashion-MNIST train items and the photos
{', '.join(TRAIN_BACKGROUNDS)}; `validation` ({params['num_validation']}) and `test` ({params['num_test']})
use Fashion-MNIST test images 0-4999 and 5000-9999 respectively, and the photos
{', '.join(EVAL_BACKGROUNDS)}. No source image is shared between train and validation/test.

Columns: `image` (RGB PNG), `label` (mode "L" PNG mask). Classes (also in `id2label.json`):

| id | label |
|---|---|
{classes}

## Sources and licences

- Fashion-MNIST, (c) 2017 Zalando SE, MIT licence: https://github.com/zalandoresearch/fashion-mnist
- Background photographs from `skimage.data` (scikit-image): mostly public domain or CC0; see the
  `skimage.data` documentation for each image's source and licence.

Load with `datasets.load_from_disk(path)`.
"""
