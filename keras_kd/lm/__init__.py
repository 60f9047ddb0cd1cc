"""Generative language models: generation, and students built from teachers.

| name | what it does |
| --- | --- |
| `generate` | samples continuations of left-aligned prompts from any causal LM |
| `OnPolicyDistiller` | trains partly on the student's own samples (GKD) |
| `teacher_generations` | the teacher's continuations as training windows, stored once |
| `init_from_teacher` | a student started from mapped teacher blocks (DistilBERT) |
| `speculative_generate` | the student as drafter: acceptance rate, target calls |
| `align_tokenizations` | pairs two tokenizations of one text by where tokens end |
| `aligned_teacher`, `aligned_dataset` | distil across vocabularies with ULD |

The objectives for generative models (`ReverseKL`, `GeneralizedJSD`,
`SkewKL`, `TotalVariation`, `UniversalLogitDistance`) are in
`keras_kd.losses`.
"""

from keras_kd.lm.aligned import GatherPositions, aligned_dataset, aligned_teacher
from keras_kd.lm.drafting import SpeculativeGeneration, speculative_generate
from keras_kd.lm.from_teacher import init_from_teacher
from keras_kd.lm.generation import Generation, generate
from keras_kd.lm.on_policy import OnPolicyDistiller
from keras_kd.lm.sequence_level import teacher_generations
from keras_kd.lm.vocabularies import (
    TokenAlignment,
    align_tokenizations,
    keras_hub_tokenize,
    with_vocabulary,
)

__all__ = [
    "GatherPositions",
    "Generation",
    "OnPolicyDistiller",
    "SpeculativeGeneration",
    "TokenAlignment",
    "align_tokenizations",
    "aligned_dataset",
    "aligned_teacher",
    "generate",
    "init_from_teacher",
    "keras_hub_tokenize",
    "speculative_generate",
    "teacher_generations",
    "with_vocabulary",
]
