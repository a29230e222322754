"""Accuracy matrices and the summary metrics of continual learning.

``R[i][j]`` is the test accuracy on task ``j`` after training task ``i``; ``b[j]`` the accuracy
of the untrained initial model on task ``j``. With ``T`` tasks (Lopez-Paz & Ranzato 2017,
GEM, Section 2; Chaudhry et al. 2018 for forgetting):

* ACC = mean_j R[T-1][j]
* BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])
* FWT = mean_{j>0} (R[j-1][j] - b[j])
* Forgetting = mean_{j<T-1} (max_{l<T-1} R[l][j] - R[T-1][j])

While a run is in progress the summaries are taken over the tasks trained so far (``T`` =
rows filled). Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SUMMARIES = ("acc", "bwt", "fwt", "forgetting")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass
class AccuracyMatrix:
    """A ``T x T`` matrix of accuracies plus the initial model's accuracy per task."""

    n_tasks: int
    rows: list[list[float]] = field(default_factory=list)
    initial: list[float] | None = None

    def set_initial(self, accs: list[float]) -> None:
        self._check_row(accs)
        self.initial = [float(a) for a in accs]

    def add_row(self, accs: list[float]) -> None:
        """Record the accuracies on every task after training the next task."""
        if len(self.rows) >= self.n_tasks:
            raise ValueError(f"matrix already holds {self.n_tasks} rows")
        self._check_row(accs)
        self.rows.append([float(a) for a in accs])

    def _check_row(self, accs: list[float]) -> None:
        if len(accs) != self.n_tasks:
            raise ValueError(f"a row needs {self.n_tasks} accuracies, got {len(accs)}")

    @property
    def trained(self) -> int:
        """Number of tasks trained so far (rows filled)."""
        return len(self.rows)

    def acc(self) -> float:
        if not self.rows:
            return math.nan
        last = self.rows[-1]
        return _mean(last[: self.trained])

    def bwt(self) -> float:
        t = self.trained
        if t < 2:
            return math.nan
        last = self.rows[-1]
        return _mean([last[j] - self.rows[j][j] for j in range(t - 1)])

    def fwt(self) -> float:
        t = self.trained
        if self.initial is None or t < 2:
            return math.nan
        return _mean([self.rows[j - 1][j] - self.initial[j] for j in range(1, t)])

    def forgetting(self) -> float:
        t = self.trained
        if t < 2:
            return math.nan
        last = self.rows[-1]
        return _mean(
            [max(self.rows[l][j] for l in range(j, t - 1)) - last[j] for j in range(t - 1)]
        )

    def summary(self) -> dict[str, float]:
        return {name: getattr(self, name)() for name in SUMMARIES}

    def to_dict(self) -> dict:
        return {"n_tasks": self.n_tasks, "initial": self.initial, "rows": self.rows}

    @classmethod
    def from_dict(cls, d: dict) -> AccuracyMatrix:
        m = cls(int(d["n_tasks"]))
        if d.get("initial") is not None:
            m.set_initial(d["initial"])
        for row in d["rows"]:
            m.add_row(row)
        return m

    def format(self, title: str = "") -> str:
        """The matrix as a fixed-width text table, percentages, one row per trained task."""
        head = "after \\ on " + " ".join(f"{'T' + str(j):>6}" for j in range(self.n_tasks))
        lines = [title] if title else []
        lines.append(head)
        if self.initial is not None:
            lines.append(f"{'init':<11}" + " ".join(f"{100 * a:6.2f}" for a in self.initial))
        for i, row in enumerate(self.rows):
            lines.append(f"{'T' + str(i):<11}" + " ".join(f"{100 * a:6.2f}" for a in row))
        return "\n".join(lines)
