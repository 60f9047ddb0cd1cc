"""`teacher_generations`: the teacher's continuations as training windows.

The windows are checked against `kd.lm.generate` run independently, chunk by
chunk with the documented seeds; the weights against the positions computed
in numpy from the prompt lengths; the stored logits against a float64 numpy
forward pass of the teacher (a causal convolution) on the stored ids. The
teacher counts its own executions (a layer adding 1 to a variable that is not
one of its weights, so that its fingerprint stays put), so a test can say
when a stored generation is read rather than made again.
"""

import os

import numpy as np
import pytest

import keras_kd as kd
from conftest import np_log_softmax
from keras_kd.backend import keras, tf
from keras_kd.cache import shards
from keras_kd.lm.sequence_level import teacher_generations

VOCAB, LENGTH, PROMPT, NEW = 11, 8, 3, 4


def counting_lm(width, seed, calls=None):
    """Embedding + causal Conv1D + Dense over windows of LENGTH tokens; with
    `calls`, each forward pass adds 1 to that variable."""

    class Count(keras.layers.Layer):
        def call(self, ids):
            if calls is not None:
                calls.assign_add(1)
            return ids

    inputs = keras.Input((LENGTH,), dtype="int32")
    init = keras.initializers.RandomNormal(stddev=1.0, seed=seed)
    h = keras.layers.Embedding(VOCAB, width, embeddings_initializer=init)(
        Count()(inputs)
    )
    h = keras.layers.Conv1D(width, 3, padding="causal", activation="tanh")(h)
    return keras.Model(inputs, keras.layers.Dense(VOCAB, kernel_initializer=init)(h))


def np_conv_logits(model, ids):
    """float64 logits of `counting_lm` on `(batch, time)` ids: position t sees
    tokens t-2, t-1 and t."""
    embeddings, conv_kernel, conv_bias, kernel, bias = (
        w.astype(np.float64) for w in model.get_weights()
    )
    x = embeddings[np.asarray(ids)]
    padded = np.concatenate([np.zeros_like(x[:, :2]), x], axis=1)
    steps = x.shape[1]
    hidden = sum(padded[:, k : k + steps] @ conv_kernel[k] for k in range(3))
    return np.tanh(hidden + conv_bias) @ kernel + bias


@pytest.fixture
def calls():
    return tf.Variable(0, dtype=tf.int64, trainable=False)


@pytest.fixture
def teacher(calls):
    return counting_lm(16, seed=1, calls=calls)


def prompts_and_lengths(count=10, seed=0):
    rng = np.random.default_rng(seed)
    prompts = rng.integers(1, VOCAB, (count, PROMPT)).astype("int32")
    return prompts, rng.integers(1, PROMPT + 1, count).astype("int32")


def arrays(dataset):
    """The examples of an unbatched dataset stacked, one array per field."""
    return [np.stack(field) for field in zip(*dataset.as_numpy_iterator())]


def expected_weights(lengths, new=NEW, width=LENGTH):
    """1 at positions t with len - 1 <= t <= len + new - 2: those whose next
    token is generated."""
    t = np.arange(width)[None, :]
    start = np.asarray(lengths)[:, None] - 1
    return ((t >= start) & (t < start + new)).astype("float32")


def store(tmp_path, where):
    return None if where == "memory" else tmp_path / "generations"


# --- the windows ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_windows_equal_generate_chunk_by_chunk(teacher, tmp_path, where):
    prompts, lengths = prompts_and_lengths()
    given = (
        (prompts, lengths) if where == "memory" else (tf.constant(prompts), [*lengths])
    )
    ds = teacher_generations(
        teacher,
        given[0],
        NEW,
        top_k=6,
        seed=7,
        prompt_lengths=given[1],
        batch_size=4,
        pad_token_id=10,
        path=store(tmp_path, where),
    )
    assert int(ds.cardinality()) == len(prompts)
    ids, next_ids, weights = arrays(ds)
    chunks = []
    for b, start in enumerate(range(0, len(prompts), 4)):
        out = kd.lm.generate(
            teacher,
            prompts[start : start + 4],
            NEW,
            top_k=6,
            seed=tf.random.experimental.stateless_fold_in([0, 7], b),
            prompt_lengths=lengths[start : start + 4],
            pad_token_id=10,
        )
        chunks.append(out.ids.numpy())
    np.testing.assert_array_equal(ids, np.concatenate(chunks))
    assert ids.dtype == np.int32 and ids.shape == (len(prompts), LENGTH)
    t = np.arange(LENGTH)[None, :]
    inside = t < lengths[:, None]
    np.testing.assert_array_equal(ids[inside], prompts[inside[:, :PROMPT]])
    np.testing.assert_array_equal(ids[t >= lengths[:, None] + NEW], 10)
    np.testing.assert_array_equal(next_ids[:, :-1], ids[:, 1:])
    np.testing.assert_array_equal(next_ids[:, -1], 10)
    np.testing.assert_array_equal(weights, expected_weights(lengths))
    assert weights.dtype == np.float32


def test_same_seed_same_windows_and_chunks_sample_apart(teacher):
    prompts = np.tile(prompts_and_lengths()[0][:1], (8, 1))  # one prompt, 8 times
    first = arrays(teacher_generations(teacher, prompts, NEW, seed=3, batch_size=4))[0]
    again = arrays(teacher_generations(teacher, prompts, NEW, seed=3, batch_size=4))[0]
    other = arrays(teacher_generations(teacher, prompts, NEW, seed=4, batch_size=4))[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # Each chunk has its own seed: the same prompt in the same row of two
    # chunks is not sampled alike.
    assert not np.array_equal(first[:4], first[4:])
    greedy = [
        arrays(teacher_generations(teacher, prompts, NEW, temperature=0.0, seed=s))[0]
        for s in (0, 1)
    ]
    np.testing.assert_array_equal(greedy[0], greedy[1])
    assert (greedy[0] == greedy[0][:1]).all()


@pytest.mark.parametrize("where", ["memory", "disk"])
@pytest.mark.parametrize("logits_top_k", [None, 4])
def test_stored_logits_are_the_teachers_on_the_windows(
    teacher, tmp_path, where, logits_top_k
):
    prompts, lengths = prompts_and_lengths()
    common = dict(seed=5, prompt_lengths=lengths, batch_size=4)
    windows = arrays(teacher_generations(teacher, prompts, NEW, **common))
    ds = teacher_generations(
        teacher,
        prompts,
        NEW,
        logits=True,
        logits_top_k=logits_top_k,
        path=store(tmp_path, where),
        **common,
    )
    assert int(ds.cardinality()) == len(prompts)
    ids, next_ids, stored, weights = arrays(ds)
    for got, want in zip((ids, next_ids, weights), windows):
        np.testing.assert_array_equal(got, want)
    reference = np_conv_logits(teacher, ids)
    assert stored.shape == reference.shape == (len(prompts), LENGTH, VOCAB)
    if logits_top_k is None:
        np.testing.assert_allclose(stored, reference, atol=1e-4)
        return
    kept = np.argsort(-reference, axis=-1)[..., :logits_top_k]
    np.testing.assert_allclose(
        np.take_along_axis(stored, kept, -1),
        np.take_along_axis(reference, kept, -1),
        atol=1e-4,
    )
    dropped = np.ones_like(stored, bool)
    np.put_along_axis(dropped, kept, False, -1)
    floor = np.take_along_axis(stored, kept, -1).min(-1, keepdims=True)
    assert (stored[dropped] < np.broadcast_to(floor, stored.shape)[dropped] - 1e5).all()


# --- training on them ---------------------------------------------------------------


def np_weighted_cross_entropy(model, ids, next_ids, weights):
    log_p = np_log_softmax(model.predict(ids, verbose=0))
    picked = np.take_along_axis(log_p, next_ids[..., None], -1)[..., 0]
    return -(picked * weights).sum() / weights.sum()


def test_student_cross_entropy_on_the_generations_falls(teacher):
    prompts, lengths = prompts_and_lengths(count=64, seed=1)
    ds = teacher_generations(
        teacher, prompts, NEW, temperature=0.0, prompt_lengths=lengths, seed=0
    )
    windows = arrays(ds)
    student = counting_lm(8, seed=2)
    before = np_weighted_cross_entropy(student, *windows)
    student.compile(
        optimizer=keras.optimizers.Adam(0.03),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    student.fit(ds.shuffle(64, seed=0).batch(16), epochs=4, verbose=0)
    after = np_weighted_cross_entropy(student, *windows)
    assert after < 0.5 * before, (before, after)


def np_masked_kl(teacher_logits, student_logits, weights):
    lt, ls = np_log_softmax(teacher_logits), np_log_softmax(student_logits)
    kl = (np.exp(lt) * (lt - ls)).sum(-1)
    return (kl * weights).sum() / weights.sum()


def test_distiller_trains_on_stored_logits_without_running_the_teacher(teacher, calls):
    prompts, lengths = prompts_and_lengths(count=64, seed=2)
    ds = teacher_generations(
        teacher,
        prompts,
        NEW,
        prompt_lengths=lengths,
        seed=0,
        batch_size=16,
        logits=True,
        logits_top_k=4,
    )
    ids, _, stored, weights = arrays(ds)
    student = counting_lm(8, seed=3)
    before = np_masked_kl(stored, student.predict(ids, verbose=0), weights)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer=keras.optimizers.Adam(0.03),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        alpha=0.5,
    )
    start = int(calls.numpy())
    distiller.fit(ds.shuffle(64, seed=0).batch(16), epochs=3, verbose=0)
    # 12 steps; the teacher runs once, on the first batch (fit's check that
    # the stored outputs are its own), never in a step.
    assert int(calls.numpy()) - start <= 1
    after = np_masked_kl(stored, student.predict(ids, verbose=0), weights)
    assert after < 0.5 * before, (before, after)


# --- the store on disk ----------------------------------------------------------------


def test_a_finished_store_is_read_without_running_the_teacher(teacher, calls, tmp_path):
    prompts, lengths = prompts_and_lengths()
    path = tmp_path / "store"
    common = dict(prompt_lengths=lengths, batch_size=4, path=path)

    def run(**kwargs):
        start = int(calls.numpy())
        result = arrays(teacher_generations(teacher, prompts, NEW, **common, **kwargs))
        return result, int(calls.numpy()) - start

    made, count = run(seed=9)
    assert count == 3 * NEW  # 3 chunks, one forward pass per new token
    assert (path / "generations.json").exists()
    for kwargs in ({"seed": 9}, {"seed": None}):  # None: the recorded seed
        read, count = run(**kwargs)
        assert count == 0
        for got, want in zip(read, made):
            np.testing.assert_array_equal(got, want)
    # Logits are added from the stored windows: one teacher pass, no generation.
    with_logits, count = run(seed=9, logits=True)
    assert count == 3
    np.testing.assert_array_equal(with_logits[0], made[0])
    assert run(seed=9, logits=True)[1] == 0
    assert run(seed=9, logits=True, logits_top_k=4)[1] == 3
    assert sorted(p.name for p in path.iterdir() if p.is_dir()) == [
        "logits",
        "logits-top4",
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        ("weights", "stale generations"),
        ("prompts", "other prompts"),
        ({"seed": 8}, r"seed=9\. Received: seed=8"),
        ({"temperature": 0.5}, r"temperature=1\.0\. Received: temperature=0\.5"),
        ({"max_new_tokens": 3}, "max_new_tokens=4"),
        ({"batch_size": 5}, "batch_size=4"),
        ({"top_k": 3}, "top_k=None"),
    ],
    ids=["weights", "prompts", "seed", "temperature", "new", "batch", "top_k"],
)
def test_another_teacher_prompts_or_settings_are_refused(
    teacher, calls, tmp_path, change, message
):
    prompts, lengths = prompts_and_lengths()
    kwargs = dict(
        max_new_tokens=NEW,
        seed=9,
        prompt_lengths=lengths,
        batch_size=4,
        path=tmp_path,
    )
    made = arrays(teacher_generations(teacher, prompts, **kwargs))
    given_teacher, given_prompts, given = teacher, prompts, dict(kwargs)
    if change == "weights":
        given_teacher = counting_lm(16, seed=1, calls=calls)
        given_teacher.set_weights([w + 0.01 for w in teacher.get_weights()])
    elif change == "prompts":
        given_prompts = (prompts % (VOCAB - 1)) + 1
    else:
        given.update(change)
    start = int(calls.numpy())
    with pytest.raises(ValueError, match=message) as error:
        teacher_generations(given_teacher, given_prompts, **given)
    assert "`path`" in str(error.value)
    assert int(calls.numpy()) == start
    # The store is left as it was: still read with the settings it was made with.
    read = arrays(teacher_generations(teacher, prompts, **kwargs))
    assert int(calls.numpy()) == start
    np.testing.assert_array_equal(read[0], made[0])


def test_a_half_written_store_is_never_read(teacher, calls, tmp_path, monkeypatch):
    prompts, lengths = prompts_and_lengths()
    kwargs = dict(seed=9, prompt_lengths=lengths, batch_size=4, path=tmp_path)
    publish = shards.write_manifest

    def crash(*args, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(shards, "write_manifest", crash)
    with pytest.raises(OSError, match="disk full"):
        teacher_generations(teacher, prompts, NEW, **kwargs)
    assert (tmp_path / "generations-00000.tfrecord").exists()
    assert not (tmp_path / "generations.json").exists()
    monkeypatch.setattr(shards, "write_manifest", publish)
    start = int(calls.numpy())
    ids = arrays(teacher_generations(teacher, prompts, NEW, **kwargs))[0]
    assert int(calls.numpy()) - start == 3 * NEW  # generated again
    expected = arrays(
        teacher_generations(
            teacher, prompts, NEW, seed=9, prompt_lengths=lengths, batch_size=4
        )
    )[0]
    np.testing.assert_array_equal(ids, expected)


def test_a_damaged_store_or_orphan_logits_are_refused(teacher, tmp_path):
    prompts, lengths = prompts_and_lengths()
    kwargs = dict(seed=9, prompt_lengths=lengths, batch_size=4, path=tmp_path)
    teacher_generations(teacher, prompts, NEW, logits=True, **kwargs)
    shard = tmp_path / "generations-00000.tfrecord"
    content = shard.read_bytes()
    shard.write_bytes(content[:-5])
    with pytest.raises(ValueError, match="generations-00000.tfrecord.*truncated"):
        teacher_generations(teacher, prompts, NEW, **kwargs)
    shard.write_bytes(content)
    os.remove(tmp_path / "generations.json")
    with pytest.raises(ValueError, match="holds teacher logits.*no generations.json"):
        teacher_generations(teacher, prompts, NEW, **kwargs)


# --- arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, argument",
    [
        ({"teacher": "model"}, TypeError, "teacher"),
        ({"prompts": np.zeros((2, 3), "float32")}, TypeError, "prompts"),
        ({"prompts": np.ones(3, "int32")}, ValueError, "prompts"),
        ({"prompts": tf.data.Dataset.range(3)}, TypeError, "prompts"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**31}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"prompt_lengths": [1, 2]}, ValueError, "prompt_lengths"),
        ({"prompt_lengths": [0, 1, 1, 1]}, ValueError, "prompt_lengths"),
        ({"pad_token_id": -1}, ValueError, "pad_token_id"),
        ({"length": 9}, ValueError, "length"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"logits": "yes"}, TypeError, "logits"),
        ({"logits_top_k": 3}, ValueError, "logits_top_k"),
        ({"logits": True, "logits_top_k": VOCAB}, ValueError, "logits_top_k"),
        ({"logits": True, "logits_top_k": 0}, ValueError, "logits_top_k"),
        ({"path": 3}, TypeError, "path"),
        ({"path": "file"}, ValueError, "path"),
    ],
)
def test_bad_arguments_name_the_argument(
    teacher, calls, tmp_path, kwargs, error, argument
):
    arguments = {"teacher": teacher, "prompts": np.ones((4, PROMPT), "int32")}
    arguments["max_new_tokens"] = NEW
    arguments.update(kwargs)
    if arguments.get("path") == "file":
        arguments["path"] = tmp_path / "file"
        arguments["path"].write_text("")
    with pytest.raises(error, match=f"`{argument}`"):
        teacher_generations(**arguments)
    assert int(calls.numpy()) == 0
