"""Ensembles of frozen models, averaged in probability space.

The soft targets of several teachers (Born-Again ensembles, a cohort's
peers, several teachers of one student) are the average of their
*probabilities*, not of their logits. This module holds that average once.
"""

from __future__ import annotations

import math

from keras_kd import _utils
from keras_kd.backend import keras, tf


def member_log_probs(outputs, output_probabilities):
    """float32 log-probabilities of each member's output.

    Args:
        outputs: one tensor per member, logits or probabilities.
        output_probabilities: one bool per member, True where that member's
            output is probabilities (its last layer applies softmax).

    Returns:
        A list of float32 log-probability tensors.
    """
    return [
        _utils.log_probs(out)
        if probs
        else tf.nn.log_softmax(tf.cast(out, tf.float32), -1)
        for out, probs in zip(outputs, output_probabilities)
    ]


def log_mean_probs(log_probs, weights=None):
    """log(sum_k w_k p_k) from members' log-probabilities, computed stably.

    Args:
        log_probs: a list of log-probability tensors of the same shape.
        weights: None (equal weights) or one non-negative number per member;
            they are normalised to sum to 1.

    Returns:
        The log of the weighted mean probability: logits whose softmax is the
        ensemble's prediction.
    """
    stacked = tf.stack(list(log_probs), axis=0)
    if weights is None:  # logsumexp - log(n)
        return tf.reduce_logsumexp(stacked, axis=0) - math.log(len(log_probs))
    total = float(sum(weights))
    log_w = tf.reshape(
        tf.math.log(tf.constant([w / total for w in weights], tf.float32)),
        [-1] + [1] * (stacked.shape.rank - 1),
    )
    return tf.reduce_logsumexp(stacked + log_w, axis=0)


class Ensemble(keras.Model):
    """Frozen models whose averaged probabilities act as one teacher.

    Its output is `log(mean_k softmax(z_k))`: logits whose softmax is the
    members' mean probability (Furlanello et al. 2018's BANE teacher). Each
    member's own last-layer softmax, if any, is detected.

    Args:
        members: a list of `keras.Model`s with outputs of the same shape.
        weights: None (equal) or one non-negative weight per member.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:

    ```python
    teacher = kd.ensemble.Ensemble([teacher_a, teacher_b])
    distiller = kd.Distiller(teacher=teacher, student=student)
    ```
    """

    def __init__(self, members, weights=None, **kwargs):
        super().__init__(**kwargs)
        members = list(members)
        if not members:
            raise ValueError(
                "Argument `members` must hold at least one model. Received: members=[]."
            )
        for i, member in enumerate(members):
            _utils.check_model(member, f"members[{i}]")
        if weights is not None:
            weights = [
                _utils.check_number(w, f"weights[{i}]", low=0.0)
                for i, w in enumerate(weights)
            ]
            if len(weights) != len(members) or sum(weights) <= 0:
                raise ValueError(
                    "Argument `weights` must hold one non-negative weight per "
                    f"member ({len(members)}), not all zero. "
                    f"Received: weights={weights}."
                )
        self.members = members
        self.member_weights = weights
        self._probabilities = [
            (_utils.output_is_probabilities(m) or [False])[0] for m in members
        ]

    def call(self, inputs, training=False):
        outputs = [member(inputs, training=False) for member in self.members]
        return log_mean_probs(
            member_log_probs(outputs, self._probabilities), self.member_weights
        )
