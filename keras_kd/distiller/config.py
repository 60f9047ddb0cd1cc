"""How a `Distiller` is saved and rebuilt: its config and compile config.

A mixin of `keras_kd.Distiller` (kept apart so that each file holds one
concept). The config holds the models and only the options that are set, so
that a plain Distiller's config is as keras-kd 0.1's, whose files still load
(a 0.1 file with `train_teacher=True` loads as a
`keras_kd.OnlineDistiller`). A teacher swapped in by `replace_teacher` is not
part of the saved state.
"""

from __future__ import annotations

from keras_kd import taps
from keras_kd.backend import keras
from keras_kd.distiller import teacher_side


class DistillerConfig:
    """`get_config` / `from_config` and the compile config (a mixin)."""

    def get_compile_config(self):
        config = super().get_compile_config()
        if not config:
            return config
        config = dict(config)
        config["distillation_loss"] = keras.saving.serialize_keras_object(
            self._distillation_loss
        )
        config["alpha"] = self.alpha
        return config

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        # A teacher swapped in by `replace_teacher` is not part of the saved
        # state (its weights are not saved), so it is not in the config.
        teacher = None if self._teacher_swapped else self.teacher
        serialize = keras.saving.serialize_keras_object
        config = {
            "name": self.name,
            "teacher": None if teacher is None else serialize(teacher),
            "student": serialize(self.student),
        }
        # Only when set, so a plain Distiller's config is as keras-kd 0.1's.
        for key, value in (("augmentation", self.augmentation), ("mixup", self.mixup)):
            if value is not None:
                config[key] = serialize(value)
        if not self._teacher_swapped and isinstance(self.teacher, (list, tuple)):
            config["teacher"] = [serialize(t) for t in self._teachers]
        config.update(
            teacher_side.routing_config(
                self._features,
                teacher_weights=self._teacher_weights,
                teacher_inputs=self._teacher_inputs,
                student_inputs=self._student_inputs,
                class_indices=self._class_indices,
                teacher_classes=self._teacher_classes,
                mask_token_id=self._mask_token_id,
                teacher_dtype=self._teacher_dtype,
            )
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if config.get("train_teacher") and not cls.train_teacher:
            # A keras-kd 0.1 file: one class then, `train_teacher=True` for
            # online training. Found by its registered name, so that this
            # module never imports `keras_kd.online` (built on this one).
            cls = keras.saving.get_registered_object("keras_kd>OnlineDistiller")
            if cls is None:
                raise ValueError(
                    "This file holds an online Distiller (train_teacher=True); "
                    "import keras_kd (which registers "
                    "`keras_kd.OnlineDistiller`) before loading it."
                )
        deserialize = keras.saving.deserialize_keras_object
        teacher = config.pop("teacher", None)
        for key in ("augmentation", "mixup"):
            if config.get(key) is not None:
                config[key] = deserialize(config[key])
        if config.get("features"):
            config["features"] = [
                taps.FeatureMatch.from_config(c) for c in config["features"]
            ]
        if isinstance(teacher, list):
            teacher = [deserialize(t) for t in teacher]
        elif teacher is not None:
            teacher = deserialize(teacher)
        return cls(
            teacher=teacher,
            student=deserialize(config.pop("student")),
            **config,
        )
