"""Statistics against known values and hand computations."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.analysis.stats import (
    MeanCI,
    ecdf,
    jain,
    mean,
    mean_ci,
    percentile,
    percentiles,
    shares,
    stdev,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize("n", [1, 2, 4, 10, 100])
def test_jain_of_equal_shares_is_one(n):
    assert jain([7.0] * n) == pytest.approx(1.0)


@pytest.mark.parametrize("n", [1, 2, 4, 10, 100])
def test_jain_of_one_hot_is_one_over_n(n):
    assert jain([1.0] + [0.0] * (n - 1)) == pytest.approx(1.0 / n)


def test_jain_hand_computed_and_edges():
    # (1+2+3)^2 / (3 * (1+4+9)) = 36/42
    assert jain([1, 2, 3]) == pytest.approx(36 / 42)
    assert jain([3, 1]) == jain([0.75, 0.25]) == pytest.approx(16 / 20)   # scale-free
    assert math.isnan(jain([0, 0, 0]))
    with pytest.raises(ValueError):
        jain([])
    with pytest.raises(ValueError):
        jain([1, -1])


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=50))
@settings(max_examples=200, deadline=None)
def test_jain_is_between_one_over_n_and_one(xs):
    j = jain(xs)
    if math.isnan(j):
        assert all(x == 0 for x in xs)
    else:
        assert 1 / len(xs) - 1e-9 <= j <= 1 + 1e-9


def test_percentiles_linear_interpolation_type_7():
    xs = [15, 20, 35, 40, 50]
    # rank h = (n-1) q/100: q=40 → h=1.6 → 20 + 0.6*(35-20) = 29
    assert percentile(xs, 40) == pytest.approx(29.0)
    assert percentile(xs, 0) == 15 and percentile(xs, 100) == 50 and percentile(xs, 50) == 35
    assert percentile([3, 1, 2], 50) == 2                       # unsorted input
    assert percentile([5], 99) == 5
    assert percentiles(range(1, 101), (50, 90, 99)) == \
        pytest.approx({50: 50.5, 90: 90.1, 99: 99.01})
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1], 101)


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60), st.floats(0, 100))
@settings(max_examples=200, deadline=None)
def test_percentile_agrees_with_numpy(xs, q):
    np = pytest.importorskip("numpy")
    assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-9, abs=1e-6)


@pytest.mark.parametrize("df,t", [(1, 12.7062047362), (2, 4.3026527297), (3, 3.1824463053),
                                  (4, 2.7764451052), (5, 2.5705818366), (9, 2.2621571628),
                                  (29, 2.0452296421), (120, 1.9799304050)])
def test_t_quantile_matches_tables(df, t):
    assert t_quantile(0.975, df) == pytest.approx(t, rel=1e-8)
    assert t_cdf(t, df) == pytest.approx(0.975, abs=1e-10)


def test_t_quantile_symmetry_and_other_levels():
    assert t_quantile(0.5, 7) == 0
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4))
    assert t_quantile(0.95, 10) == pytest.approx(1.8124611228, rel=1e-8)
    assert t_quantile(0.995, 3) == pytest.approx(5.8409093097, rel=1e-8)


def test_mean_ci_against_hand_computation():
    xs = [10.0, 12.0, 11.0, 13.0]
    m = 11.5
    s = math.sqrt(((10 - m) ** 2 + (12 - m) ** 2 + (11 - m) ** 2 + (13 - m) ** 2) / 3)   # 1.29099
    half = 3.1824463053 * s / math.sqrt(4)   # t(0.975, 3)
    ci = mean_ci(xs)
    assert ci.n == 4 and ci.mean == pytest.approx(m) and ci.half == pytest.approx(half, rel=1e-9)
    assert ci.low == pytest.approx(m - half) and ci.high == pytest.approx(m + half)
    assert half == pytest.approx(2.0542, abs=1e-4)


def test_mean_ci_single_value_and_constant():
    one = mean_ci([3.0])
    assert one == MeanCI(1, 3.0, None) and one.low is None
    assert mean_ci([2.0, 2.0, 2.0]).half == 0.0
    assert mean_ci([1, 2, 3], confidence=0.9).half < mean_ci([1, 2, 3]).half
    with pytest.raises(ValueError):
        mean_ci([])


def test_overlaps():
    assert mean_ci([1, 2, 3]).overlaps(mean_ci([2, 3, 4]))
    assert not MeanCI(3, 1.0, 0.1).overlaps(MeanCI(3, 2.0, 0.1))
    assert MeanCI(1, 1.0, None).overlaps(MeanCI(3, 1.05, 0.1))


def test_mean_stdev_shares_ecdf():
    assert mean([1, 2, 3, 4]) == 2.5 and stdev([5]) == 0.0
    assert stdev([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(2.1380899)
    assert shares({"a": 1, "b": 3}) == {"a": 0.25, "b": 0.75}
    assert shares({"a": 0, "b": 0}) == {"a": 0.0, "b": 0.0}
    xs, ps = ecdf([3, 1, 2, 2])
    assert xs == [1, 2, 2, 3] and ps == [0.25, 0.5, 0.75, 1.0]
