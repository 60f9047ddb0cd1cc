"""Projection adapters, spatial alignment, and the feature term of a step."""

from __future__ import annotations

import numbers

from keras_kd import _utils, backend
from keras_kd.backend import keras, tf
from keras_kd.taps.views import build_view, feature_shape, layer_path


def make_adapter(width: int, rank: int, name: str):
    """A learned projection to `width` channels: a 1x1 Conv2D or a Dense."""
    if rank == 4:
        return keras.layers.Conv2D(width, 1, name=name)
    return keras.layers.Dense(width, name=name)


def plan_match(match, teacher_shape, student_shape, position: int):
    """Checks one pair's shapes; returns (adapter side or None, its width).

    Raises a ValueError naming the pair, both shapes and the option to use
    when the pair cannot be compared as configured.
    """
    where = f"features[{position}] ({match!r})"
    if not getattr(match.loss, "compares_positions", True):
        if match.spatial is not None:
            raise ValueError(
                f"{where}: spatial={match.spatial!r} aligns maps position by "
                f"position, which {type(match.loss).__name__} does not compare. "
                "Use spatial=None."
            )
        return _projection_side(match, teacher_shape, student_shape, where)
    if len(teacher_shape) != len(student_shape):
        raise ValueError(
            f"{where}: the teacher's feature has shape {teacher_shape} and the "
            f"student's {student_shape}: different ranks cannot be compared."
        )
    spatial_t, spatial_s = teacher_shape[1:-1], student_shape[1:-1]
    if (
        match.spatial is None
        and _known(spatial_t, spatial_s)
        and spatial_t != spatial_s
    ):
        raise ValueError(
            f"{where}: spatial sizes differ, teacher {teacher_shape} and student "
            f"{student_shape}. Pass spatial='pool' (average-pool the larger map "
            "down) or spatial='resize' (resize the student's map to the "
            "teacher's size) to align them explicitly."
        )
    if match.spatial == "pool" and _known(spatial_t, spatial_s):
        for a, b in zip(spatial_t, spatial_s):
            if max(a, b) % min(a, b):
                raise ValueError(
                    f"{where}: spatial='pool' needs sizes that divide each "
                    f"other; teacher {teacher_shape}, student {student_shape}. "
                    "Use spatial='resize'."
                )
    return _projection_side(match, teacher_shape, student_shape, where)


def _projection_side(match, teacher_shape, student_shape, where):
    width_t, width_s = teacher_shape[-1], student_shape[-1]
    agnostic = getattr(match.loss, "width_agnostic", False)
    side = match.projection
    if side == "auto":
        side = "student" if (width_t != width_s and not agnostic) else None
    if side is not None and (width_t is None or width_s is None):
        raise ValueError(
            f"{where}: a projection needs known channel widths; teacher "
            f"{teacher_shape}, student {student_shape}."
        )
    if side is None and width_t != width_s and not agnostic:
        raise ValueError(
            f"{where}: channel widths differ (teacher {width_t}, student "
            f"{width_s}) and projection=None. Use projection='auto' (a learned "
            "adapter maps the student's feature to the teacher's width)."
        )
    return side, (width_t if side == "student" else width_s)


def _known(a, b) -> bool:
    return all(isinstance(v, numbers.Integral) for v in (*a, *b))


def align_spatial(teacher, student, mode):
    """The two maps at one spatial size, as `mode` says (None: unchanged)."""
    if mode is None or teacher.shape.rank < 3:
        return teacher, student
    size_t = tf.shape(teacher)[1:-1]
    if mode == "resize":
        if teacher.shape.rank != 4:
            raise ValueError("spatial='resize' needs 4-D (batch, H, W, C) features.")
        resized = tf.image.resize(tf.cast(student, tf.float32), size_t, "bilinear")
        return teacher, resized
    return _pool_to(teacher, student), _pool_to(student, teacher)


def _pool_to(value, other):
    """`value` average-pooled to `other`'s spatial size when it is larger."""
    rank = value.shape.rank
    sizes = value.shape[1:-1]
    targets = other.shape[1:-1]
    factors = [
        int(s) // int(t) if s and t and s > t else 1 for s, t in zip(sizes, targets)
    ]
    if all(f == 1 for f in factors):
        return value
    del rank
    window = [1, *factors, 1]
    return tf.nn.avg_pool(tf.cast(value, tf.float32), window, window, "VALID")


class Features:
    """A Distiller's feature taps: the views, the adapters and the term.

    Args:
        matches: the `FeatureMatch`es, in order.
        student: the student model.
        teachers: the list of teachers (may be empty: no teacher yet, as in
            the first generation of self-distillation).
    """

    def __init__(self, matches, student, teachers):
        self.matches = list(matches)
        self._student_taps = [
            (layer_path(student, m.student_layer, "student_layer"), m.student_index)
            for m in self.matches
        ]
        self.student_view = build_view(student, self._student_taps, "student_layer")
        self._student_shapes = [
            feature_shape(student, path, index, "student_layer")
            for path, index in self._student_taps
        ]
        self._sides = [None] * len(self.matches)
        self._adapter_of = [None] * len(self.matches)
        self.adapters = []
        self.teacher_views = {}
        self._teacher_taps = {}
        if teachers:
            self.set_teachers(teachers, create_adapters=True)

    def resolved_matches(self):
        """The matches with their layers as name paths (for configs)."""
        resolved = []
        for match, (path, _) in zip(self.matches, self._student_taps):
            config = match.get_config()
            teacher = self._teacher_taps.get(id(match))
            if teacher is not None:
                name = "/".join(teacher[0])
                config["teacher_layer"] = (
                    name if teacher[1] is None else [name, teacher[1]]
                )
            name = "/".join(path)
            config["student_layer"] = (
                name if match.student_index is None else [name, match.student_index]
            )
            resolved.append(config)
        return resolved

    def set_teachers(self, teachers, create_adapters: bool = False):
        """Builds each tapped teacher's view; checks (or creates) adapters."""
        count = len(teachers)
        taps = {}
        for position, match in enumerate(self.matches):
            if match.teacher >= count:
                raise ValueError(
                    f"features[{position}] reads teacher {match.teacher}, but "
                    f"there {'is' if count == 1 else 'are'} {count} "
                    f"teacher{'' if count == 1 else 's'} (indices from 0)."
                )
            model = teachers[match.teacher]
            path = layer_path(model, match.teacher_layer, "teacher_layer")
            self._teacher_taps[id(match)] = (path, match.teacher_index)
            taps.setdefault(match.teacher, []).append(position)
            shape_t = feature_shape(model, path, match.teacher_index, "teacher_layer")
            side, width = plan_match(
                match, shape_t, self._student_shapes[position], position
            )
            source = shape_t if side == "teacher" else self._student_shapes[position]
            self._plan_adapter(position, side, width, source, create_adapters)
        views = {}
        for index, positions in taps.items():
            specs = [self._teacher_taps[id(self.matches[p])] for p in positions]
            views[index] = (
                build_view(teachers[index], specs, "teacher_layer"),
                positions,
            )
        self.teacher_views = views

    def _plan_adapter(self, position, side, width, source_shape, create):
        existing = self._adapter_of[position]
        if create and side is not None:
            adapter = make_adapter(width, len(source_shape), f"adapter_{position}")
            adapter.build(source_shape)
            self._adapter_of[position] = adapter
            self.adapters.append(adapter)
        elif side != self._sides[position] or (
            existing is not None and _adapter_width(existing) != width
        ):
            raise ValueError(
                f"features[{position}]: the new teacher needs "
                f"{'no adapter' if side is None else f'a {side}-side adapter'}"
                " but the Distiller was built "
                f"{'without one' if existing is None else 'with another'}. Build a "
                "new Distiller for a teacher whose tapped widths differ."
            )
        self._sides[position] = side

    def term(
        self, teacher_features, student_features, sample_weight=None, token_mask=None
    ):
        """`sum_i weight_i * loss_i(teacher_i, student_i)`, a float32 scalar.

        Args:
            teacher_features: one tensor per match (gradient stopped here).
            student_features: one tensor per match.
            sample_weight: optional sample weights: one per example, or one
                per token `(batch, time)` (a padding mask).
            token_mask: the Keras mask `(batch, time)` of the student's
                outputs (`mask_zero=True`), or None: padded tokens then
                weigh nothing, as with a padding mask.
        """
        sample_weight = _utils.with_token_mask(sample_weight, token_mask)
        terms = []
        for position, match in enumerate(self.matches):
            # New tensors (no Keras mask attached: the weights say which
            # tokens count, see `_utils.with_token_mask`).
            teacher = tf.stop_gradient(tf.cast(teacher_features[position], tf.float32))
            student = tf.identity(tf.cast(student_features[position], tf.float32))
            if getattr(match.loss, "compares_positions", True):
                teacher, student = align_spatial(teacher, student, match.spatial)
            adapter = self._adapter_of[position]
            if self._sides[position] == "student":
                student = tf.cast(adapter(student), tf.float32)
            elif self._sides[position] == "teacher":
                teacher = tf.cast(adapter(teacher), tf.float32)
            backend.allow_batch_mean_under_strategy(match.loss)
            teacher, student, weights = _per_token(
                match, position, teacher, student, sample_weight
            )
            value = tf.cast(
                match.loss(teacher, student, sample_weight=weights), tf.float32
            )
            if backend.LEGACY:  # Keras 3 losses scale per replica themselves
                value = value / float(backend.num_replicas())
            terms.append(match.weight * value)
        if not terms:
            return tf.zeros((), tf.float32)
        return tf.add_n(terms)


def _per_token(match, position, teacher, student, sample_weight):
    """Features and weights for per-token sample weights (a padding mask).

    With weights of shape `(batch, time)`, a loss that compares positions
    one by one (`FeatureMSE`, `CosineDistance`, a function) sees every token
    as a row, `(batch * time, width)`, weighted so that the term is the mean
    over the real tokens; `AttentionMapLoss` takes the `(batch, queries)`
    mask itself. Other losses take one weight per example and refuse.
    """
    flat = tf.nest.flatten(sample_weight) if sample_weight is not None else []
    weights = flat[0] if len(flat) == 1 else sample_weight
    rank = getattr(getattr(weights, "shape", None), "rank", None)
    if weights is None or rank is None or rank < 2:
        return teacher, student, weights
    loss = match.loss
    if getattr(loss, "accepts_token_weights", False):  # attention maps
        return teacher, student, weights
    if getattr(loss, "width_agnostic", False) or teacher.shape.rank != rank + 1:
        raise ValueError(
            f"features[{position}] ({match!r}): per-token sample weights of "
            f"shape {tuple(weights.shape)} weight one feature vector per token "
            f"of a (batch, time, width) feature; {type(loss).__name__} on "
            f"features of shape {tuple(teacher.shape)} takes one weight per "
            "example. Use loss='mse' or 'cosine' on hidden states, or "
            "'attention_map' on attention scores."
        )
    weights = tf.cast(weights, tf.float32)
    size = tf.cast(tf.size(weights), tf.float32)
    weights = tf.math.divide_no_nan(weights * size, tf.reduce_sum(weights))
    return (
        tf.reshape(teacher, [-1, tf.shape(teacher)[-1]]),
        tf.reshape(student, [-1, tf.shape(student)[-1]]),
        tf.reshape(weights, [-1]),
    )


def _adapter_width(adapter) -> int:
    return adapter.filters if hasattr(adapter, "filters") else adapter.units


__all__ = ["Features", "align_spatial", "make_adapter", "plan_match"]
