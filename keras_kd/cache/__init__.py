"""Teacher outputs computed once, in memory or as TFRecord shards on disk.

`with_teacher_outputs` runs a frozen teacher once over the data and returns
an unbatched `tf.data.Dataset` of `TeacherBatch` elements that a
`keras_kd.Distiller` trains on without running its teacher; users reach it
as `keras_kd.data.with_teacher_outputs`. Modules: `batch.py` (the element,
its stored form, the top-k rebuild), `shards.py` (TFRecord shards and the
manifest), `views.py` (cached augmented views, one drawn per epoch),
`workers.py` (the teacher pass split across the workers of a multi-worker
strategy), `source.py` (the data read as numpy batches), `outputs.py`
(the teacher pass).
"""

from keras_kd.cache.batch import TOP_K_GAP, TeacherBatch, rebuild_top_k
from keras_kd.cache.outputs import fingerprint, with_teacher_outputs

__all__ = [
    "TOP_K_GAP",
    "TeacherBatch",
    "fingerprint",
    "rebuild_top_k",
    "with_teacher_outputs",
]
