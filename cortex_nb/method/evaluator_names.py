"""The evaluators' names, apart from their code: the profile's checks read them without importing torchvision
(a command such as ``python -m cortex_nb ledger`` never needs it)."""

#: The paper's four pretrained evaluators (torchvision model names), section 4.1.
EVALUATOR_NAMES = ("resnet18", "resnet50", "vit_b_16", "vit_b_32")
#: Their toy-world stand-ins, position by position (ResNet18, ResNet50, ViT-B/16, ViT-B/32).
TOY_EVALUATOR_NAMES = ("resnet18", "resnet34", "vit_p4", "vit_p8")
#: Names for tables and figures.
DISPLAY_NAMES = {
    "resnet18": "ResNet18",
    "resnet34": "ResNet34",
    "resnet50": "ResNet50",
    "vit_b_16": "ViT-B/16",
    "vit_b_32": "ViT-B/32",
    "vit_p4": "ViT-p4",
    "vit_p8": "ViT-p8",
}
