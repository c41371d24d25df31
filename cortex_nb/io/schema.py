"""What a profile may hold: every key, its type and its allowed range, checked when it is loaded.

A profile value that is wrong (a string for a count, ``shard_size: 0``, a section replaced by a
number, an unknown evaluator) is refused by :func:`validate` with a :class:`~cortex_nb.io.config.ProfileError`
that names the key, the value and what is allowed, before any work starts and before anything is
written. Without it the same values fail minutes later, deep inside a stage, as a raw
``ZeroDivisionError`` or ``AttributeError`` -- or, worse, half-create a directory.

:data:`SCHEMA` lists every leaf key of the profiles (a test checks that each shipped profile has
exactly these keys). The sub-sections ``vqgm.tokenizer``, ``vqgm.prior`` and ``evaluators.fit``
are dataclasses' fields (``TokenizerConfig``, ``PriorConfig``, ``FitConfig``): they are checked
against those dataclasses' annotations.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = ["SCHEMA", "validate", "Check"]


@dataclass(frozen=True)
class Check:
    """One key's rule: ``kind`` is int | float | bool | str | choice | list | ints | pairs | section;
    ``lo`` / ``hi`` bound numbers (inclusive; ``lo_open`` makes lo exclusive); ``optional``
    admits null; ``choices`` for choice and the items of list."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    optional: bool = False
    choices: tuple = ()
    empty: bool = False     # list: [] is allowed too

    def allowed(self) -> str:
        """What the rule admits, in words (for the error message)."""
        if self.kind in ("int", "float"):
            what = "an integer" if self.kind == "int" else "a number"
            rng = []
            if self.lo is not None:
                rng.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
            if self.hi is not None:
                rng.append(f"<= {self.hi:g}")
            what += (" " + " and ".join(rng)) if rng else ""
        elif self.kind == "bool":
            what = "true or false"
        elif self.kind == "str":
            what = "a string"
        elif self.kind == "choice":
            what = "one of " + ", ".join(map(str, self.choices))
        elif self.kind == "list":
            what = ("a list" if self.empty else "a non-empty list") + " of " + ", ".join(map(str, self.choices))
        elif self.kind == "ints":
            what = f"a non-empty list of distinct integers >= {self.lo:g}"
        elif self.kind == "pairs":
            what = "a non-empty list of [source, target] class pairs, two different classes in [0, world.n_classes)"
        else:
            what = "a section (a mapping of keys)"
        return what + (" (or null)" if self.optional else "")

    def ok(self, v: Any) -> bool:
        if v is None:
            return self.optional
        if self.kind == "int":
            return isinstance(v, int) and not isinstance(v, bool) and self._in_range(v)
        if self.kind == "float":
            return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and self._in_range(v))
        if self.kind == "bool":
            return isinstance(v, bool)
        if self.kind == "str":
            return isinstance(v, str) and v != ""
        if self.kind == "choice":
            return v in self.choices
        if self.kind == "list":
            return (isinstance(v, list) and (len(v) > 0 or self.empty) and all(x in self.choices for x in v)
                    and len(set(v)) == len(v))
        if self.kind == "ints":
            return (isinstance(v, list) and len(v) > 0 and len(set(v)) == len(v)
                    and all(isinstance(x, int) and not isinstance(x, bool) and self._in_range(x) for x in v))
        if self.kind == "pairs":
            return (isinstance(v, list) and len(v) > 0
                    and all(isinstance(p, list) and len(p) == 2 and all(isinstance(c, int) and not isinstance(c, bool)
                                                                         for c in p) and p[0] != p[1] for p in v))
        return isinstance(v, Mapping)

    def _in_range(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or v <= self.hi


def _int(lo: int | None = 1, **kw) -> Check:
    return Check("int", lo=lo, **kw)


def _pos(**kw) -> Check:
    """A number > 0 (learning rates, temperatures)."""
    return Check("float", lo=0, lo_open=True, **kw)


def _nonneg(**kw) -> Check:
    return Check("float", lo=0, **kw)


def _choice(*choices: str) -> Check:
    return Check("choice", choices=choices)


def _evaluator_names() -> tuple:
    from ..method.evaluator_names import EVALUATOR_NAMES, TOY_EVALUATOR_NAMES

    return tuple(dict.fromkeys((*TOY_EVALUATOR_NAMES, *EVALUATOR_NAMES)))


#: what may replace a masked patch (cortex_nb.method.masking.Fill, plus "token": token in-fill and decode)
FILLS = ("black", "mean", "blur", "token")

#: every leaf key of a profile and its rule; sections checked against a dataclass map to "section"
SCHEMA: dict[str, Check] = {
    "name": Check("str"),
    "seed": _int(0),
    "replicate": _int(0),
    "replicates": _int(1),
    "device": Check("str"),  # resolved and checked by config.resolve_device
    "threads": _int(1),
    "progress": Check("bool"),
    "dry_run": Check("bool"),
    "robustness": Check("bool"),
    "world.n_classes": _int(2),
    "world.image_size": _int(8),
    "world.scene_bias": Check("float", lo=0, hi=1),
    "world.classes": Check("ints", lo=0, optional=True),
    "vqgm.source": _choice("toy", "taming"),
    "vqgm.family": _choice("taming", "maskgit", "python"),
    "vqgm.maskgit": Check("section"),
    "vqgm.factory": Check("str", optional=True),
    "vqgm.config": Check("str", optional=True),
    "vqgm.ckpt": Check("str", optional=True),
    "vqgm.trust_checkpoint": Check("bool"),
    "vqgm.tokenizer": Check("section"),
    "vqgm.prior": Check("section"),
    "vqgm.n_report": _int(0),
    "vqgm.n_samples": _int(1),
    "evaluators.source": _choice("toy", "torchvision"),
    "evaluators.names": Check("list", choices=()),  # choices filled lazily (evaluators module)
    "evaluators.weights_dir": Check("str", optional=True),
    "evaluators.preprocess": _choice("torchvision", "reference"),
    "evaluators.n_train": _int(0),
    "evaluators.n_val": _int(0),
    "evaluators.fit": Check("section"),
    "data.n_train": _int(1),
    "data.n_val": _int(1),
    "data.n_test": _int(1),
    "data.temperature": _pos(),
    "data.top_k": _int(1, optional=True),
    "data.top_p": _pos(hi=1, optional=True),
    "data.batch_size": _int(1),
    "data.shard_size": _int(1),
    "extractors.archs": Check("list", choices=("CE", "RE")),
    "extractors.width": _int(1),
    "extractors.fc": _int(1, optional=True),
    "extractors.re_variant": _choice("paper", "scripts"),
    "extractors.epochs": _int(1),
    "extractors.batch_size": _int(1),
    "extractors.lr": _pos(),
    "extractors.weight_decay": _nonneg(),
    "saliency.variant": _choice("paper", "reference"),
    "saliency.n_samples": _int(1),
    "saliency.alpha": _nonneg(),
    "saliency.chunk": _int(1),
    "saliency.chunk_rows": _int(1),
    "saliency.mask_mode": _choice("equal_area", "token_ids"),
    "saliency.fill": _choice(*FILLS),
    "saliency.fills": Check("list", choices=FILLS),
    "saliency.area_k": Check("ints", lo=1),
    "saliency.random_seeds": _int(1),
    "saliency.fills_n": Check("ints", lo=1, optional=True),
    "saliency.fills_random_seeds": _int(1, optional=True),
    "saliency.n_concept": _int(1),
    "saliency.k_concept": _int(1),
    "saliency.n_localisation": _int(0),
    "saliency.head_fraction": Check("float", lo=0, hi=1),
    "optimization.pairs": Check("pairs"),
    "optimization.steps": _int(1),
    "optimization.lr": _pos(),
    "optimization.tau": _pos(),
    "optimization.alpha": _nonneg(),
    "optimization.init": _choice("random", "original"),
    "optimization.record_every": _int(1),
    "optimization.region_size": _int(1, optional=True),
    "optimization.saliency_region": Check("bool"),
    "optimization.jobs": _int(1),
    "optimization.controls": Check("bool"),
    "optimization.original_control": Check("bool"),
    "faithfulness.n_per_class": _int(1),
    "faithfulness.steps": _int(1),
    "faithfulness.ig_steps": _int(1),
    "faithfulness.archs": Check("list", choices=("CE", "RE")),
    "faithfulness.fills": Check("list", choices=FILLS, optional=True),
    "faithfulness.n_localisation": _int(0),
    "faithfulness.permuted": Check("list", choices=("CE", "RE"), empty=True),
    "bias.n_train": _int(1),
    "bias.n_val": _int(1),
    "bias.epochs": _int(1),
    "bias.n_per_class": _int(2),
    "bias.n_boot": _int(10),
    "bias.statistic": _choice("detected", "counts"),
    "bias.alpha": _pos(),
    "bias.generator_control": Check("bool"),
    "bias.control_prior_n": _int(1),
    "bias.control_prior_steps": _int(1),
    "verdicts.equivalence_margin": _pos(),
}

#: keys added by load_profile itself (not in the YAML files)
DERIVED = ("paths",)

#: dataclass fields that must be >= 1 (counts and sizes); every other numeric field must be >= 0
_AT_LEAST_ONE = {"ch", "num_res_blocks", "z_channels", "embed_dim", "n_embed", "steps", "batch_size",
                 "ckpt_every", "log_every", "n_layer", "n_head", "n_embd", "n_train", "epochs",
                 "step_size", "max_steps_per_epoch"}
_POSITIVE = {"lr", "gamma"}


def _section_dataclasses() -> dict[str, type]:
    from ..engine.train import FitConfig
    from ..toy.maskgit import MaskGITConfig
    from ..toy.prior import PriorConfig
    from ..toy.tokenizer import TokenizerConfig

    return {"vqgm.tokenizer": TokenizerConfig, "vqgm.prior": PriorConfig, "vqgm.maskgit": MaskGITConfig,
            "evaluators.fit": FitConfig}


def _field_check(name: str, annotation: str) -> Check | None:
    """A Check from a dataclass field's (string) annotation; None for fields we do not check."""
    optional = "None" in annotation
    base = annotation.replace("| None", "").replace("None |", "").strip()
    lo = 1 if name in _AT_LEAST_ONE else 0
    if base == "int":
        return Check("int", lo=lo, optional=optional)
    if base == "float":
        return Check("float", lo=0, lo_open=name in _POSITIVE, optional=optional)
    if base == "bool":
        return Check("bool", optional=optional)
    return None


def _list_of_ints(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(c, int) and not isinstance(c, bool) and c >= 1
                                                      for c in v)


def validate(tree: Mapping, refuse: Callable[[str, Any, str], Exception]) -> None:
    """Check a resolved profile (plain dict) against :data:`SCHEMA`; ``refuse(key, value, allowed)``
    builds the exception raised for the first bad key. Unknown keys are refused too."""
    sections = {k.split(".")[0] for k in SCHEMA if "." in k}
    for top, value in tree.items():
        if top in DERIVED:
            continue
        if top in sections:
            if not isinstance(value, Mapping):
                raise refuse(top, value, "a section (a mapping of keys)")
            for key, v in value.items():
                dotted = f"{top}.{key}"
                if dotted not in SCHEMA:
                    raise refuse(dotted, v, "one of the known keys: " + ", ".join(
                        k for k in SCHEMA if k.startswith(top + ".")))
        elif top not in SCHEMA:
            raise refuse(top, value, "one of the known keys: " + ", ".join(k for k in SCHEMA if "." not in k))
    for dotted, rule in SCHEMA.items():
        node: Any = tree
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise refuse(dotted, "<missing>", rule.allowed())
            node = node[part]
        if dotted == "evaluators.names":
            rule = dataclasses.replace(rule, choices=_evaluator_names())
        if not rule.ok(node):
            raise refuse(dotted, node, rule.allowed())
    n_classes = tree["world"]["n_classes"]
    classes = tree["world"].get("classes")
    for c in classes or ():
        if not 0 <= c < n_classes:
            raise refuse("world.classes", classes, f"class ids in [0, world.n_classes) = [0, {n_classes})")
    for pair in tree["optimization"]["pairs"]:
        if not all(0 <= c < n_classes for c in pair):
            raise refuse("optimization.pairs", pair, f"classes in [0, world.n_classes) = [0, {n_classes})")
        if classes is not None and not all(c in classes for c in pair):   # Table 3 edits images of both classes
            raise refuse("optimization.pairs", pair, f"classes the run generates (world.classes = {list(classes)})")
    if tree["vqgm"]["family"] == "python" and not tree["vqgm"]["factory"]:
        raise refuse("vqgm.factory", tree["vqgm"]["factory"],
                     "'package.module:function' returning the VQGM (vqgm.family is python)")
    if tree["vqgm"]["family"] == "maskgit":
        if tree["vqgm"]["source"] != "toy":
            raise refuse("vqgm.family", "maskgit", "taming or python: the toy MaskGIT is trained on the toy world "
                         "(vqgm.source toy)")
        _validate_sections(tree, refuse, ("vqgm.maskgit",))
    if tree["vqgm"]["source"] == "toy":
        _validate_sections(tree, refuse, ("vqgm.tokenizer", "vqgm.prior"))
    if tree["evaluators"]["source"] == "toy":
        _validate_sections(tree, refuse, ("evaluators.fit",))
        for key in ("evaluators.n_train", "evaluators.n_val"):
            if tree["evaluators"][key.split(".")[1]] < 1:
                raise refuse(key, tree["evaluators"][key.split(".")[1]], "an integer >= 1 (toy evaluators are trained here)")


def _validate_sections(tree: Mapping, refuse, names: tuple[str, ...]) -> None:
    classes = _section_dataclasses()
    for dotted in names:
        top, sub = dotted.split(".")
        fields = {f.name: f for f in dataclasses.fields(classes[dotted])}
        for key, v in tree[top][sub].items():
            if key not in fields:
                raise refuse(f"{dotted}.{key}", v, f"a field of {classes[dotted].__name__}: " + ", ".join(fields))
            if key == "ch_mult":
                if not _list_of_ints(v):
                    raise refuse(f"{dotted}.{key}", v, "a non-empty list of integers >= 1")
                continue
            rule = _field_check(key, str(fields[key].type))
            if rule is not None and not rule.ok(v):
                raise refuse(f"{dotted}.{key}", v, rule.allowed())
