"""Published evaluation protocols by name (`eomae evaluate --preset NAME`).

A preset sets the evaluation fields its paper states and names the published numbers a
report should be compared with. The sources, and what they leave open, are in each
`source`; where a paper's protocol is not reachable it is not guessed at (MultiMAE-EO's
GEO-Bench protocols: its fine-tuning code is "coming soon", and the paper's tables could not
be read here, so there is no preset for them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """Evaluation fields, and the published scores (in %) they reproduce."""

    fields: dict[str, Any]
    metric: str
    published: dict[str, float] = field(default_factory=dict)  # model -> score
    source: str = ""


SOFTCON = (
    "zhu-xlab/softcon README.md 18-27 (linear probing; ViT-B/14: a linear head on 4 output "
    "layers, DINOv2 appendix B.3: pool last4, that encoder's default); the paper's split, "
    "class count and metric are not in its README: {rest} as in the same lab's SSL4EO-S12 "
    "code (its linear_*.py)"
)
PRESETS = {
    "softcon-bigearthnet-10": Preset(
        fields={
            "benchmark": "bigearthnet",
            "protocols": ["linear"],
            "inputs": ["s2"],
            "inits": ["pretrained"],
            "label_fractions": [0.1],
        },  # fmt: skip
        metric="mAP_micro",
        published={"softcon-vits14": 85.0, "softcon-vitb14": 86.8},
        source=SOFTCON.format(
            rest="BigEarthNet v1, 19 classes, micro mAP, 10 % a seeded random share of train"
        ),
    ),
    "softcon-eurosat": Preset(
        fields={
            "benchmark": "eurosat",
            "protocols": ["linear"],
            "inputs": ["s2"],
            "inits": ["pretrained"],
            "label_fractions": [1.0],
        },  # fmt: skip
        metric="accuracy",
        published={"softcon-vits14": 97.1, "softcon-vitb14": 98.0},
        source=SOFTCON.format(rest="EuroSAT top-1 accuracy, all of train"),
    ),
}


def apply_preset(data: dict[str, Any]) -> dict[str, Any]:
    """Evaluation config data with the preset's fields; a field set otherwise is an error."""
    name = data.get("preset")
    if name is None:
        return data
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {list(PRESETS)}")
    fields = PRESETS[name].fields
    clash = [k for k, v in fields.items() if data.get(k) is not None and data[k] != v]
    if clash:
        raise ValueError(f"preset {name} sets {', '.join(f'{k}={fields[k]!r}' for k in clash)}")
    return {**data, **fields}


def reference(name: str, encoder: str) -> str:
    """What a report of preset `name` compares with, for the encoder `encoder`."""
    preset = PRESETS[name]
    model = encoder.split(":")[0]
    scores = ", ".join(f"{m} {v:.1f}" for m, v in preset.published.items())
    mine = (f" — for this encoder ({model}): {preset.published[model]:.1f}"
            if model in preset.published else "")  # fmt: skip
    return f"{preset.metric} published: {scores}{mine}. Source: {preset.source}"
