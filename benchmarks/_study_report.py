"""Reading the default-recipe study: the tables of BENCHMARKS.md.

`report(out)` reads the runs `_study.study` wrote to the directory `out`
and returns the tables: the tasks and what the default did, each recipe's
test gain against the bar of issue 21, the rules searched on validation,
and the selection on validation that `kd.tune(budget=n)` makes, replayed.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from _study import GRID

# ---------------------------------------------------------------------------
# Reading the study
# ---------------------------------------------------------------------------

Z = 1.645  # one-sided 5%, McNemar's test in its normal approximation


def read(out):
    """`(teachers, groups)` of the study in directory `out`: the last
    teacher row per task, and per (task, size) a dict recipe -> {seed: row}."""
    teachers, groups = {}, {}
    paths = sorted(glob.glob(os.path.join(out, "*.jsonl")))
    for path in paths:
        for line in open(path):
            r = json.loads(line)
            if r["recipe"] == "teacher":
                teachers[r["task"]] = r
                continue
            group = groups.setdefault((r["task"], r["student"]), {})
            group.setdefault(r["recipe"], {})[r["seed"]] = r
    return teachers, groups


def _bits(row):
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(row["val_correct"]), np.uint8))
    return bits[: row["n_val"]].astype(bool)


def significant(trial, baseline) -> bool:
    """McNemar's paired test on validation correctness, one-sided at 5%."""
    a, b = _bits(baseline), _bits(trial)
    lost, won = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    return won - lost > Z * np.sqrt(won + lost) and won > lost


def features(teacher, group):
    """What a rule may see: the parameter ratio, and the gap to the teacher
    of a scratch student after a short run (validation, mean over seeds)."""
    scratch = list(group["scratch"].values())
    probe_epochs = max(int(k) for k in scratch[0]["probe"])
    return {
        "ratio": scratch[0]["params"] / teacher["params"],
        "classes": teacher["classes"],
        "probe_gap": teacher["val"]
        - float(np.mean([r["probe"][str(probe_epochs)] for r in scratch])),
        "probe_gap_1": teacher["val"]
        - float(np.mean([r["probe"]["1"] for r in scratch])),
        "gap": teacher["test"] - float(np.mean([r["test"] for r in scratch])),
    }


def gain(group, recipe, split="test"):
    """Mean gain over scratch (accuracy, not points) across seeds."""
    scratch = group["scratch"]
    runs = group.get(recipe, {})
    deltas = [runs[s][split] - scratch[s][split] for s in runs if s in scratch]
    return float(np.mean(deltas)) if deltas else None


def judge(teachers, groups, choose):
    """The bar of issue 21 for a choice per group (`choose(task, size,
    features) -> recipe`): its mean test gain per group, worst in test
    examples, and the median share of the gap closed where scratch is more
    than 5 points behind."""
    out = {}
    for (task, size), group in sorted(groups.items()):
        if "scratch" not in group:
            continue
        f = features(teachers[task], group)
        recipe = choose(task, size, f)
        g = gain(group, recipe)
        if g is None:
            continue
        n_test = next(iter(group["scratch"].values()))["n_test"]
        out[(task, size)] = {
            "recipe": recipe,
            "gain": g,
            "examples": g * n_test,
            "closed": g / f["gap"] if f["gap"] > 0.05 else None,
            "features": f,
        }
    closed = [v["closed"] for v in out.values() if v["closed"] is not None]
    worst = min(v["examples"] for v in out.values()) if out else float("nan")
    median = float(np.median(closed)) if closed else float("nan")
    return out, {
        "worst_examples": worst,
        "median_closed": median,
        "large_gap_groups": len(closed),
        "meets_bar": worst >= -1.0 and median >= 0.25,
    }


def ranking(groups, exclude_task=None, split="val", greedy=False):
    """The recipes of `GRID` by mean validation gain over the groups (those
    of `exclude_task` left out). With `greedy`, the order of
    `kd.tune(budget=n)`: each next recipe the one that adds most to the
    mean over groups of the best gain so far (floored at 0, training
    alone), so that the first few cover different tasks."""
    if greedy:
        return _greedy(groups, exclude_task, split)
    score = {}
    for recipe in GRID:
        gains = [
            gain(g, recipe, split)
            for (task, _), g in groups.items()
            if task != exclude_task and "scratch" in g and recipe in g
        ]
        score[recipe] = float(np.mean(gains)) if gains else -1.0
    return sorted(score, key=lambda r: -score[r])


def _greedy(groups, exclude_task, split):
    keys = [k for k, g in groups.items() if k[0] != exclude_task and "scratch" in g]
    gains = {
        r: np.array([gain(groups[k], r, split) or 0.0 for k in keys]) for r in GRID
    }
    best, order = np.zeros(len(keys)), []
    while len(order) < len(GRID):
        left = [r for r in GRID if r not in order]
        pick = max(
            left, key=lambda r: (np.maximum(best, gains[r]).mean(), gains[r].mean())
        )
        order.append(pick)
        best = np.maximum(best, gains[pick])
    return order


def select(group, seed, candidates, paired=True):
    """The test gain of choosing on validation among `candidates` for one
    seed: the best validation score, kept only if it beats scratch (by the
    paired test, or strictly)."""
    scratch = group["scratch"][seed]
    runs = [group[r][seed] for r in candidates if seed in group.get(r, {})]
    if not runs:
        return 0.0
    best = max(runs, key=lambda r: r["val"])
    if paired:
        ok = [r for r in runs if significant(r, scratch)]
        if not ok:
            return 0.0
        best = max(ok, key=lambda r: r["val"])
    elif best["val"] <= scratch["val"]:
        return 0.0
    return best["test"] - scratch["test"]


def budget_table(groups, budgets=(3, 6, 12)):
    """Test gain of selection on validation: the full grid (strict and
    paired) against the first n recipes of a leave-one-task-out ranking."""
    columns = ["grid, strict", "grid, paired"] + [
        f"budget {n}, paired" for n in budgets
    ]
    lines = [
        "| task | student | " + " | ".join(columns) + " |",
        "| --- | --- |" + " ---: |" * len(columns),
    ]
    totals = {c: [] for c in columns}
    for (task, size), group in sorted(groups.items()):
        if "scratch" not in group:
            continue
        order = ranking(groups, exclude_task=task, greedy=True)
        seeds = sorted(group["scratch"])
        cells = []
        for c in columns:
            if c.startswith("grid"):
                cands, paired = list(GRID), c.endswith("paired")
            else:
                cands, paired = order[: int(c.split()[1].rstrip(","))], True
            value = float(np.mean([select(group, s, cands, paired) for s in seeds]))
            totals[c].append(value)
            cells.append(f"{100 * value:+.2f}")
        lines.append(f"| {task} | {size} | " + " | ".join(cells) + " |")
    lines.append(
        "| **mean** | | "
        + " | ".join(f"**{100 * np.mean(v):+.2f}**" for v in totals.values())
        + " |"
    )
    return "\n".join(lines)


def _pct(x):
    return "-" if x is None else f"{100 * x:+.2f}"


def task_table(teachers, groups, choices):
    lines = [
        "| task (kind) | student: parameters (% of teacher) | teacher test | "
        "scratch test | gap | probe gap | best recipe on validation | "
        "default's choice | its test gain | gap closed |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for (task, size), group in sorted(groups.items()):
        if "scratch" not in group or (task, size) not in choices:
            continue
        t, c = teachers[task], choices[(task, size)]
        f = c["features"]
        scratch_test = np.mean([r["test"] for r in group["scratch"].values()])
        params = next(iter(group["scratch"].values()))["params"]
        best = ranking({(task, size): group})[0]
        closed = "-" if c["closed"] is None else f"{100 * c['closed']:.0f}%"
        lines.append(
            f"| {task} ({t['kind']}) | {size}: {params:,} ({100 * f['ratio']:.1f}%) | "
            f"{100 * t['test']:.1f} | {100 * scratch_test:.1f} | "
            f"{100 * f['gap']:.1f} | {100 * f['probe_gap']:.1f} | {best} "
            f"({_pct(gain(group, best, 'val'))} val) | {c['recipe']} | "
            f"{_pct(c['gain'])} | {closed} |"
        )
    return "\n".join(lines)


def recipe_table(teachers, groups):
    keys = [k for k in sorted(groups) if "scratch" in groups[k]]
    lines = [
        "| recipe | "
        + " | ".join(f"{t} {s}" for t, s in keys)
        + " | mean | worst (test examples) | median gap closed | bar |",
        "| --- |" + " ---: |" * (len(keys) + 4),
    ]
    for recipe in GRID:
        _, verdict = judge(teachers, groups, lambda *a, r=recipe: r)
        gains = [gain(groups[k], recipe) for k in keys]
        if None in gains:
            continue
        lines.append(
            f"| {recipe} | "
            + " | ".join(_pct(g) for g in gains)
            + f" | {_pct(float(np.mean(gains)))} | {verdict['worst_examples']:+.1f} | "
            f"{100 * verdict['median_closed']:.0f}% | "
            f"{'yes' if verdict['meets_bar'] else 'no'} |"
        )
    return "\n".join(lines)


def report(out, rule=None):
    """The study's tables (markdown), from the directory `out`."""
    teachers, groups = read(out)
    if rule is None:
        from keras_kd.distiller.recipe import study_choice as rule
    choices, verdict = judge(teachers, groups, rule)
    runs = sum(len(v) for g in groups.values() for v in g.values())
    seconds = sum(
        r["seconds"] for g in groups.values() for v in g.values() for r in v.values()
    )
    return "\n\n".join(
        [
            f"{runs} runs, {seconds / 60:.0f} minutes of training.",
            "Tasks, and what the default chose (test accuracy in %, gains in "
            "points, mean over seeds):",
            task_table(teachers, groups, choices),
            f"The default: worst group {verdict['worst_examples']:+.1f} test "
            f"examples against scratch, median gap closed "
            f"{100 * verdict['median_closed']:.0f}% over "
            f"{verdict['large_gap_groups']} groups where scratch is more than 5 "
            f"points behind; meets the bar: {verdict['meets_bar']}.",
            "Each recipe's mean test gain over scratch (points):",
            recipe_table(teachers, groups),
            "Rules chosen on validation (fixed recipes; two recipes split by the "
            "parameter ratio or by the short run's gap), best first:",
            rule_search(out, top=10),
            "Selection on validation, mean test gain (points) over seeds; "
            "budget n: the first n recipes of a ranking made without the task "
            "(leave one task out):",
            budget_table(groups, budgets=(1, 3, 6, 12)),
            "The order of `kd.tune(budget=n)` (all tasks): "
            + ", ".join(ranking(groups, greedy=True)),
        ]
    )


# ---------------------------------------------------------------------------
# Choosing the rule on validation
# ---------------------------------------------------------------------------


def _val_verdict(teachers, groups, choose):
    """The bar on validation figures: worst mean gain in validation
    examples, median validation gap closed where scratch is > 5 points
    behind on validation."""
    worst, closed = float("inf"), []
    for (task, size), group in groups.items():
        if "scratch" not in group:
            continue
        f = features(teachers[task], group)
        g = gain(group, choose(task, size, f), "val")
        if g is None:
            return None
        n_val = next(iter(group["scratch"].values()))["n_val"]
        worst = min(worst, g * n_val)
        val_gap = teachers[task]["val"] - np.mean(
            [r["val"] for r in group["scratch"].values()]
        )
        if val_gap > 0.05:
            closed.append(g / val_gap)
    return worst, float(np.median(closed)) if closed else float("nan")


def rule_candidates():
    """Fixed recipes, and two-recipe rules on the parameter ratio or on the
    short run's gap: `(name, choose)`."""
    out = [(r, lambda t, s, f, r=r: r) for r in GRID]
    for a in GRID:
        for b in GRID:
            if a == b:
                continue
            for cut in (0.02, 0.05):
                out.append(
                    (
                        f"ratio <= {cut:g}: {a}; else {b}",
                        lambda t, s, f, a=a, b=b, cut=cut: (
                            a if f["ratio"] <= cut else b
                        ),
                    )
                )
            for cut in (0.1, 0.2, 0.3):
                out.append(
                    (
                        f"probe gap > {cut:g}: {a}; else {b}",
                        lambda t, s, f, a=a, b=b, cut=cut: (
                            a if f["probe_gap"] > cut else b
                        ),
                    )
                )
    return out


def rule_search(out, top=15):
    """The candidates that keep every group within one validation example of
    scratch, by median validation gap closed; with their test verdicts."""
    teachers, groups = read(out)
    rows = []
    for name, choose in rule_candidates():
        v = _val_verdict(teachers, groups, choose)
        if v is None or v[0] < -1.0:
            continue
        _, test = judge(teachers, groups, choose)
        rows.append((v[1], v[0], name, test))
    rows.sort(key=lambda r: -r[0])
    lines = [
        "| rule | val: median closed | val: worst (examples) | "
        "test: median closed | test: worst (examples) | bar on test |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for med, worst, name, test in rows[:top]:
        lines.append(
            f"| {name} | {100 * med:.0f}% | {worst:+.1f} | "
            f"{100 * test['median_closed']:.0f}% | {test['worst_examples']:+.1f} | "
            f"{'yes' if test['meets_bar'] else 'no'} |"
        )
    return "\n".join(lines)
