"""Model-type knowledge in one place (mapping tables, as PEFT's `utils/constants.py`)."""

# model_type -> attribute of the segmentation model that holds its encoder (where the stem conv lives)
ENCODER_ATTRIBUTES = {
    "segformer": "segformer",
    "beit": "beit",
    "data2vec-vision": "data2vec_vision",
    "dpt": "dpt",
    "mobilenet_v2": "mobilenet_v2",
    "mobilevit": "mobilevit",
    "mobilevitv2": "mobilevitv2",
}
# backbone model types, reached through `model.backbone` of a wrapper (UperNet, DPT with a backbone)
BACKBONE_TYPES = ("convnext", "convnextv2", "swin", "dinov2", "dinov2_with_registers", "resnet", "vit", "beit_backbone")
WRAPPERS_WITH_BACKBONE = ("upernet", "dpt")
# model_type -> attribute holding the stem (the first Conv2d with C input channels is widened by add_label_channel)
STEM_ROOTS = {**ENCODER_ATTRIBUTES, **{t: "backbone" for t in BACKBONE_TYPES}}
# children of a segmentation model that are its encoder (LoRA targets live there; everything else is a head)
ENCODER_ROOTS = ("backbone",) + tuple(dict.fromkeys(ENCODER_ATTRIBUTES.values()))
# configs that are a backbone only: a segmenter is built around them (lad_hf/models/dinov2.py registers a builder)
BACKBONE_ONLY_TYPES = ("dinov2", "dinov2_with_registers")
# attention projection names, newest first (transformers 5.2x: q_proj/v_proj; DPT and older releases: query/value)
ATTENTION_NAME_SETS = (("q_proj", "v_proj"), ("query", "value"), ("q", "v"), ("qkv",))
