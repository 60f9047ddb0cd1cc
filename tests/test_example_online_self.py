"""The issue-3 examples run end to end on scikit-learn's digits."""

import numpy as np
import pytest

from conftest import load_example
from keras_kd import data, models

pytest.importorskip("sklearn")


def _test_accuracy(model):
    """Accuracy on the test set kd.data defines, by a direct call and numpy."""
    _, (x_test, y_test) = data.load_digits()
    logits = np.asarray(model(x_test, training=False))
    return float(np.mean(logits.argmax(-1) == y_test))


@pytest.mark.parametrize("name", ["self_distillation", "online_distillation"])
def test_examples_answer_help(name, capsys):
    with pytest.raises(SystemExit) as excinfo:
        load_example(name).main(["--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert "--dataset" in out and "--data-dir" in out and "--seeds" in out


def test_self_distillation_example_reports_every_generation(capsys):
    argv = (
        "--dataset digits --seeds 0 --generations 3 --epochs 3 --hidden 16 "
        "--batch-size 64 --learning-rate 0.01"
    ).split()
    out = load_example("self_distillation").main(argv)
    accs, weights = out["accuracy"][0], out["weights"][0]
    assert len(accs) == len(weights) == 3
    model = models.mlp((8, 8, 1), 10, hidden=16)
    for generation, (accuracy, generation_weights) in enumerate(zip(accs, weights)):
        model.set_weights(generation_weights)
        # the reported figure is the accuracy of that generation's weights
        assert accuracy == pytest.approx(_test_accuracy(model)), generation
        # 10 classes, chance is 10%: every generation learnt
        assert accuracy > 0.7, generation
    # each generation was trained afresh, not copied from the previous one
    assert not np.array_equal(weights[0][0], weights[1][0])
    assert not np.array_equal(weights[1][0], weights[2][0])
    assert out["mean"] == pytest.approx(accs)
    assert "generation 3 vs 1" in capsys.readouterr().out


def test_online_distillation_example_reports_peers_and_students(capsys):
    argv = (
        "--dataset digits --seeds 0 --epochs 3 --peer-hidden 16 --teacher-hidden 32 "
        "--student-hidden 8 --batch-size 64 --learning-rate 0.01"
    ).split()
    out = load_example("online_distillation").main(argv)
    r = out["results"][0]
    trained = r["models"]
    assert len(r["mutual"]) == len(trained["mutual"]) == 2
    assert len(r["independent"]) == len(trained["independent"]) == 2
    for key in ("mutual", "independent"):
        for i, model in enumerate(trained[key]):
            assert r[key][i] == pytest.approx(_test_accuracy(model)), (key, i)
            assert r[key][i] > 0.7, (key, i)  # chance is 10%
    for key in ("online_teacher", "online_student", "student_alone"):
        assert r[key] == pytest.approx(_test_accuracy(trained[key])), key
        assert r[key] > (0.7 if key == "online_teacher" else 0.5), key
    assert "Deep Mutual Learning" in capsys.readouterr().out
