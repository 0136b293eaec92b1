"""The mixture sampler shared by pretraining and SFT: seeded per-epoch orders, exact or drawn shares."""

from __future__ import annotations

import numpy as np

from lmforge.data.sampler import EpochOrder, SourceMixture


def test_each_epoch_visits_every_row_once_in_a_new_seeded_order():
    order = EpochOrder(10, (7, 0))
    first, second = [order.row(k) for k in range(10)], [order.row(k) for k in range(10, 20)]
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    again = EpochOrder(10, (7, 0))
    assert [again.row(k) for k in (13, 2, 19)] == [second[3], first[2], second[9]]  # random access, same rows
    assert [EpochOrder(10, (8, 0)).row(k) for k in range(10)] != first


def test_smooth_choice_keeps_the_shares_exact_at_every_step():
    mixture = SourceMixture([100, 100, 100], [0.5, 0.3, 0.2], seed=0)
    for step in range(1, 101):
        mixture.take(mixture.smooth_weighted_choice())
        assert all(abs(taken - w * step) < 1 for taken, w in zip(mixture.taken, mixture.weights))


def test_random_choices_depend_only_on_seed_and_index():
    a, b = SourceMixture([5, 5], [0.5, 0.5], seed=1), SourceMixture([5, 5], [0.5, 0.5], seed=1)
    assert np.array_equal(a.random_weighted_choices(9, 64), b.random_weighted_choices(9, 64))
    assert not np.array_equal(a.random_weighted_choices(9, 64), a.random_weighted_choices(10, 64))
    draws = np.concatenate([SourceMixture([5, 5], [0.8, 0.2], seed=2).random_weighted_choices(i, 64) for i in range(50)])
    assert abs(np.mean(draws == 0) - 0.8) < 0.03
