"""Generative language models: generation, and students built from teachers.

| name | what it does |
| --- | --- |
| `generate` | samples continuations of left-aligned prompts from any causal LM |
| `OnPolicyDistiller` | trains partly on the student's own samples (GKD) |
| `init_from_teacher` | a student started from mapped teacher blocks (DistilBERT) |

The objectives for generative models (`ReverseKL`, `GeneralizedJSD`,
`SkewKL`, `TotalVariation`, `UniversalLogitDistance`) are in
`keras_kd.losses`.
"""

from keras_kd.lm.from_teacher import init_from_teacher
from keras_kd.lm.generation import Generation, generate
from keras_kd.lm.on_policy import OnPolicyDistiller

__all__ = ["Generation", "OnPolicyDistiller", "generate", "init_from_teacher"]
