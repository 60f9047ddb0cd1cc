"""Teacher vs student: accuracy, agreement, calibration, per-class gaps, cost.

`compare(teacher, student, data, tflite=None, baseline=None, history=None)`
runs the models on labelled data and returns a `Report`: per model the
accuracy, top-1 agreement with the teacher, expected calibration error,
negative log-likelihood, per-class accuracy, parameters, file size and
latency per sample; the classes where the student falls furthest behind the
teacher; and, given a scratch `baseline`, the classes where distillation
made the student worse (bias inherited from the teacher, amplified, or
introduced). `print(report)` shows it; `report.save(directory)` writes
`report.json`, `report.md`, a self-contained `report.html` and PNG plots
(matplotlib, `pip install keras-kd[report]`). With `ood_data` (inputs
from outside the data's distribution, no labels) it adds, per model, the
mean predictive entropy on and off the data and the AUROC of the entropy
separating them, and says whether the student is more confident than its
teacher off the data.

The package holds one concept a module: `metrics` (ECE, NLL, agreement,
per-class accuracy, predictive entropy, AUROC, in numpy), `comparison`
(`compare`: running the models), `ood` (the out-of-distribution figures), `result`
(`Report`), `history` (training histories read into generations), `render`
(text, Markdown, HTML) and `plots` (matplotlib figures).

Example:

```python
report = kd.report.compare(teacher, student, (x_test, y_test),
                           tflite="student.tflite", baseline=scratch,
                           history=history)
print(report)
report.save("report")
```
"""

from keras_kd.report.comparison import compare
from keras_kd.report.metrics import (
    agreement,
    auroc,
    expected_calibration_error,
    negative_log_likelihood,
    predictive_entropy,
    to_probabilities,
)
from keras_kd.report.result import Report

__all__ = [
    "Report",
    "agreement",
    "auroc",
    "compare",
    "expected_calibration_error",
    "negative_log_likelihood",
    "predictive_entropy",
    "to_probabilities",
]
