"""Continual updates: a deployed model learns new classes without forgetting.

Learning without Forgetting (Li & Hoiem 2017): new data arrives with new
classes only (the old data is gone). The student is the old model with its
classification head widened to the new class count (`widen_head`: every old
weight kept, the new rows drawn by the head's own initializer); it trains on
the new labels plus distillation from the frozen old model on the old
classes, `kd.Distiller(teacher=old, student=widened,
teacher_classes=range(old_classes))`:

```python
import keras_kd as kd

student = kd.widen_head(old_model, num_classes=10)   # old: 5 classes
distiller = kd.Distiller(teacher=old_model, student=student,
                         teacher_classes=[0, 1, 2, 3, 4])
distiller.compile(optimizer="adam", loss=hard_loss,
                  distillation_loss=kd.losses.KLDivergence(temperature=2.0),
                  alpha=0.5)
distiller.fit(x_new, y_new, epochs=10)   # y_new in 5..9
```

For the same classes with new data, the old model regularises the update
the same way, without `teacher_classes`: the student starts as a copy of the
old model (`keras.models.clone_model` and `set_weights`) and the teacher is
the old model, frozen.
"""

from __future__ import annotations

import numpy as np

from keras_kd import _utils
from keras_kd.backend import keras


def widen_head(model, num_classes: int, name: str | None = None):
    """A copy of a classifier whose last `Dense` layer has more classes.

    Every weight of `model` is copied; the head's kernel and bias keep their
    old columns and gain `num_classes - old` new ones, drawn by the head's
    own initializers (seed them with `keras.utils.set_random_seed`). Before
    any training the widened model's outputs on the old classes are the old
    model's, and `model` itself is left as it was (it is the teacher of the
    update); the copy is trainable even when `model` is frozen. With a
    softmax head, the pre-softmax values of the old classes are kept; the
    probabilities renormalise over every class.

    Args:
        model: a built Sequential or Functional `keras.Model` whose last layer
            is a `Dense` layer giving one score per class.
        num_classes: the new class count, more than the head's.
        name: the new model's name (default: `"<model.name>_widened"`).

    Returns:
        A new `keras.Model` with `num_classes` outputs: the old classes
        first, in their order, then the new ones.

    Raises:
        TypeError, ValueError: for a model without a `Dense` head, or a
            `num_classes` that does not exceed the head's.

    Example:

    ```python
    student = kd.widen_head(old_model, num_classes=10)
    distiller = kd.Distiller(old_model, student, teacher_classes=range(5))
    ```
    """
    _utils.check_model(model, "model")
    head = model.layers[-1] if getattr(model, "layers", None) else None
    if not isinstance(head, keras.layers.Dense) or not getattr(model, "inputs", None):
        kind = "no layers" if head is None else type(head).__name__
        raise ValueError(
            "Argument `model` must be a built Sequential or Functional model "
            "whose last layer is a `Dense` layer (one score per class). "
            f"Received: model={model.name!r}, last layer {kind}."
        )
    old = int(head.units)
    num_classes = _utils.check_int(num_classes, "num_classes", old + 1, "classes")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"Argument `name` must be a str. Received: name={name!r}.")

    def clone(layer):
        config = layer.get_config()
        config["trainable"] = True  # a student, even of a frozen teacher
        if layer is head:
            config["units"] = num_classes
        return layer.__class__.from_config(config)

    widened = keras.models.clone_model(model, clone_function=clone)
    for source, target in zip(model.layers, widened.layers):
        if source is head:
            target.set_weights(_widened_weights(head, target))
        else:
            target.set_weights(source.get_weights())
    inputs, outputs = list(widened.inputs), list(widened.outputs)
    return keras.Model(
        inputs[0] if len(inputs) == 1 else inputs,
        outputs[0],
        name=name or f"{model.name}_widened",
    )


def _widened_weights(head, target) -> list:
    """The new head's weights: its fresh columns, the old ones copied in."""
    old = int(head.units)
    weights = []
    for old_value, new_value in zip(head.get_weights(), target.get_weights()):
        new_value = np.array(new_value, copy=True)
        new_value[..., :old] = old_value
        weights.append(new_value)
    return weights


__all__ = ["widen_head"]
