"""Generative language models: generation, and students built from teachers.

| name | what it does |
| --- | --- |
| `generate` | samples continuations of left-aligned prompts from any causal LM |
| `init_from_teacher` | a student started from mapped teacher blocks (DistilBERT) |

The objectives for generative models (`ReverseKL`, `GeneralizedJSD`,
`SkewKL`, `TotalVariation`, `UniversalLogitDistance`) are in
`keras_kd.losses`.
"""

from keras_kd.lm.from_teacher import init_from_teacher
from keras_kd.lm.generation import Generation, generate

__all__ = ["Generation", "generate", "init_from_teacher"]
