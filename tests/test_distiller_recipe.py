"""compile's default recipe and `distiller.recipe`: what ran, said once."""

import numpy as np
import pytest

import keras_kd as kd
from keras_kd.backend import keras
from keras_kd.distiller import recipe

HARD = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _dense(inputs, units, classes, name):
    """An MLP with `units` hidden units: `inputs*units + units + units*classes
    + classes` parameters."""
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(classes),
        ],
        name=name,
    )


def _distiller(units=20):
    # teacher 2,805 parameters; student 285 (10.2%) with 20 units, 845 with 60
    return kd.Distiller(
        teacher=_dense(8, 200, 5, "teacher"), student=_dense(8, units, 5, "student")
    )


def test_the_default_is_kl_at_t1_with_alpha_half():
    distiller = _distiller()
    distiller.compile("adam", HARD)
    loss = distiller.distillation_loss
    assert type(loss) is kd.losses.KLDivergence
    assert loss.temperature == 1.0 and not loss.standardize
    assert distiller.alpha == 0.5
    assert distiller.recipe.label == "KL T=1 a=0.5"
    assert (distiller.recipe.objective, distiller.recipe.temperature) == ("kl", 1.0)


@pytest.mark.parametrize("units, advice", [(20, True), (60, False)])
def test_the_recipe_advises_tune_for_a_much_smaller_student(units, advice):
    teacher, student = _dense(8, 200, 5, "teacher"), _dense(8, units, 5, "student")
    share = student.count_params() / teacher.count_params()
    assert share == pytest.approx((8 * units + units + units * 5 + 5) / 2805)
    chosen = recipe.choose([teacher], student)
    assert chosen.label == "KL T=1 a=0.5"
    assert ("budget=12" in chosen.reason) is advice
    assert (f"{100 * share:.1f}%" in chosen.reason) is advice
    assert (share <= recipe.SMALL_STUDENT) is advice


def test_the_ratio_is_to_the_largest_teacher_and_unknown_when_unbuilt():
    small, large = _dense(8, 20, 5, "s"), _dense(8, 2000, 5, "t")
    assert recipe._ratio([small, large], small) == pytest.approx(
        small.count_params() / large.count_params()
    )

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(5)

        def call(self, x):
            return self.dense(x)

    assert recipe._ratio([large], Sub()) is None
    assert recipe.choose([large], Sub()).reason == "compile's default"


def test_a_given_loss_is_recorded_as_given():
    distiller = _distiller()
    distiller.compile("adam", HARD, distillation_loss=kd.losses.DIST(4.0))
    assert distiller.alpha == 0.5  # alpha's default with a given loss
    assert distiller.recipe.reason == "given to compile"
    assert distiller.recipe.label == "DIST T=4 a=0.5"
    distiller.compile(
        "adam", HARD, distillation_loss=kd.losses.KLDivergence(2.0), alpha=0.9
    )
    assert str(distiller.recipe) == "KL T=2, alpha=0.9: given to compile"


def test_alpha_alone_keeps_the_default_objective():
    distiller = _distiller()
    distiller.compile("adam", HARD, alpha=0.3)
    assert type(distiller.distillation_loss) is kd.losses.KLDivergence
    assert distiller.distillation_loss.temperature == 1.0
    assert distiller.alpha == pytest.approx(0.3)
    assert distiller.recipe.reason.endswith("alpha given to compile")


def test_bad_alpha_is_still_refused():
    with pytest.raises(ValueError, match="alpha"):
        _distiller().compile("adam", HARD, alpha=1.5)
    with pytest.raises(TypeError, match="alpha"):
        _distiller().compile("adam", HARD, alpha="0.5")


def test_the_default_is_printed_once_by_a_verbose_fit(capsys):
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    y = np.arange(32) % 5
    distiller = _distiller()
    distiller.compile("adam", HARD)
    distiller.fit(x, y, epochs=1, verbose=0)
    assert "default recipe" not in capsys.readouterr().out  # silent when asked
    distiller.fit(x, y, epochs=1, verbose=2)
    first = capsys.readouterr().out
    assert first.count("compile's default recipe: KL T=1, alpha=0.5") == 1
    assert "budget=12" in first  # a 10.2% student: the advice
    distiller.fit(x, y, epochs=1, verbose=2)
    assert "default recipe" not in capsys.readouterr().out  # once
    given = _distiller()
    given.compile("adam", HARD, distillation_loss=kd.losses.KLDivergence(1.0))
    given.fit(x, y, epochs=1, verbose=2)
    assert "default recipe" not in capsys.readouterr().out  # nothing to announce


def test_no_teacher_trains_on_the_labels():
    distiller = kd.Distiller(teacher=None, student=_dense(8, 20, 5, "student"))
    distiller.compile("adam", HARD)
    assert distiller.recipe.reason.startswith("no teacher")
