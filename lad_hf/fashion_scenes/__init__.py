"""fashion-scenes: the embedded benchmark (real Fashion-MNIST items on real skimage photographs) and its harness.

Not part of the library's core: `lad_hf` never imports this subpackage. It builds the dataset
(`python -m lad_hf.fashion_scenes --output_dir DIR`), runs the demo (`python -m lad_hf.fashion_scenes.demo`)
and holds the small experiment runner that the demo and `benchmarks/` share.
"""

from .dataset import (
    FASHION_SCENES_ID2LABEL,
    build_fashion_scenes,
    load_fashion_mnist,
    load_or_build_fashion_scenes,
    render_scene,
    scene_layout,
)

__all__ = [
    "FASHION_SCENES_ID2LABEL", "build_fashion_scenes", "load_fashion_mnist", "load_or_build_fashion_scenes",
    "render_scene", "scene_layout",
]
