"""The few statistics the results need, in plain Python (no scipy).

- percentile: Hyndman & Fan's type 7 (numpy's and R's default): rank h = (n - 1) * q / 100,
  value x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h]) on the sorted samples.
- mean_ci: mean over repetitions and the two-sided Student-t interval's half-width
  t(1 - (1 - c) / 2, n - 1) * s / sqrt(n), s the sample standard deviation; the t quantile by
  bisection on the t CDF (regularized incomplete beta, Lentz's continued fraction).
- jain: Jain's fairness index (sum x)^2 / (n * sum x^2): 1 = every pod the same, 1/n = one pod.
- shares: counts -> fractions of the total; ecdf: the empirical CDF's steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K")


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation (type 7, numpy's default)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    h = (len(xs) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def percentiles(values: Iterable[float],
                qs: Sequence[float] = (50, 90, 99)) -> dict[float, float]:
    """{q: percentile} for several q at once."""
    xs = sorted(float(v) for v in values)
    return {q: percentile(xs, q) for q in qs}


def mean(values: Iterable[float]) -> float:
    """The arithmetic mean (math.fsum: an accurately rounded sum)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean of no values")
    return math.fsum(xs) / len(xs)


def stdev(values: Iterable[float]) -> float:
    """Sample standard deviation (n - 1 in the denominator); 0 for a single value."""
    xs = [float(v) for v in values]
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


@dataclass(frozen=True)
class MeanCI:
    """A mean over repetitions and its confidence interval.

    n: number of values
    mean: their mean
    half: half-width of the interval (None with a single value: no interval)
    confidence: e.g. 0.95
    """
    n: int
    mean: float
    half: float | None
    confidence: float = 0.95

    @property
    def low(self) -> float | None:
        return None if self.half is None else self.mean - self.half

    @property
    def high(self) -> float | None:
        return None if self.half is None else self.mean + self.half

    def overlaps(self, other: MeanCI) -> bool:
        """Whether the two intervals share a point (a value without interval is a point)."""
        a_low, a_high = self._bounds()
        b_low, b_high = other._bounds()
        return a_low <= b_high and b_low <= a_high

    def _bounds(self) -> tuple[float, float]:
        """(low, high); a value without interval is the point (mean, mean)."""
        if self.half is None:
            return self.mean, self.mean
        return self.mean - self.half, self.mean + self.half


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> MeanCI:
    """Mean and two-sided Student-t confidence interval over repetitions."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean of no values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} is not between 0 and 1")
    m = mean(xs)
    if len(xs) < 2:
        return MeanCI(1, m, None, confidence)
    t = t_quantile(1 - (1 - confidence) / 2, len(xs) - 1)
    return MeanCI(len(xs), m, t * stdev(xs) / math.sqrt(len(xs)), confidence)


# -- Student t --------------------------------------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    ln_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    if df <= 0:
        raise ValueError("degrees of freedom must be positive")
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t such that P(T <= t) = p (bisection on t_cdf, to ~1e-12)."""
    if not 0 < p < 1:
        raise ValueError(f"probability {p} is not between 0 and 1")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


# -- distribution -----------------------------------------------------------------------------

def jain(values: Iterable[float]) -> float:
    """Jain's fairness index of an allocation: 1 = all equal, 1/n = one gets everything.

    Include the pods that got nothing (as 0). An all-zero allocation has no index: nan."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("fairness of no values")
    if any(x < 0 for x in xs):
        raise ValueError("fairness of negative values")
    top = max(xs)
    if top == 0:
        return math.nan
    ys = [x / top for x in xs]          # scale-free; keeps tiny or huge counts from under/overflow
    return math.fsum(ys) ** 2 / (len(ys) * math.fsum(y * y for y in ys))


def shares(counts: Mapping[K, float]) -> dict[K, float]:
    """{key: count} -> {key: fraction of the total} (all 0 when the total is 0), order kept."""
    total = math.fsum(float(v) for v in counts.values())
    return {k: (float(v) / total if total else 0.0) for k, v in counts.items()}


def ecdf(values: Iterable[float]) -> tuple[list[float], list[float]]:
    """The empirical CDF: sorted values and, for each, the fraction of values <= it (i/n)."""
    xs = sorted(float(v) for v in values)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]
