"""Learning-rate schedules: cosine with warmup at known points, and the halve-on-plateau rule."""

from __future__ import annotations

import math

import pytest

from tinylm.train.schedule import PlateauState, cosine_lr, plateau_update

MAX, MIN = 1e-3, 1e-4


# ---------------------------------------------------------------- cosine

@pytest.mark.parametrize("step, want", [(0, 1e-4), (1, 2e-4), (4, 5e-4), (9, 1e-3)])
def test_warmup_is_linear_from_max_over_warmup_steps(step, want):
    assert cosine_lr(step, progress=0.0, max_lr=MAX, min_lr=MIN, warmup_steps=10) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("progress, want", [
    (0.0, MAX),
    (0.5, 5.5e-4),  # the docstring's example: halfway -> (max + min) / 2
    (1.0, MIN),
    (0.25, MIN + (MAX - MIN) * 0.5 * (1 + math.cos(math.pi * 0.25))),
    (1.5, MIN),  # past the end: stays at the floor
])
def test_cosine_decay_without_warmup(progress, want):
    assert cosine_lr(100, progress, MAX, MIN, warmup_steps=0) == pytest.approx(want, rel=1e-12)


def test_cosine_decay_starts_where_warmup_ended():
    # warmup ended at 20% of the run: decay runs over the remaining 80%
    lr = lambda p: cosine_lr(50, p, MAX, MIN, warmup_steps=10, warmup_progress=0.2)  # noqa: E731
    assert lr(0.2) == pytest.approx(MAX)
    assert lr(0.6) == pytest.approx((MAX + MIN) / 2)
    assert lr(1.0) == pytest.approx(MIN)
    assert lr(0.1) == pytest.approx(MAX)  # before the decay start is clamped, not extrapolated


def test_cosine_is_continuous_at_the_end_of_warmup_and_then_non_increasing():
    W, N = 10, 100
    lrs = [cosine_lr(s, s / N, MAX, MIN, W, warmup_progress=W / N) for s in range(N + 1)]
    assert lrs[W - 1] == pytest.approx(MAX) and lrs[W] == pytest.approx(MAX)
    assert all(b <= a + 1e-15 for a, b in zip(lrs[W:], lrs[W + 1:]))
    assert lrs[-1] == pytest.approx(MIN)
    assert min(lrs[W:]) >= MIN - 1e-15


# ---------------------------------------------------------------- plateau

def test_plateau_keeps_the_rate_while_loss_improves():
    s = PlateauState(lr=1e-3)
    for loss in (3.0, 2.5, 2.0, 1.9):
        s = plateau_update(s, loss)
        assert s.lr == 1e-3 and s.best == loss and s.bad_epochs == 0


def test_plateau_halves_when_loss_stops_improving():
    s = plateau_update(PlateauState(lr=1e-3), 2.0)
    s = plateau_update(s, 2.0)  # the docstring's example: best 2.0, loss 2.0, patience 0
    assert s.lr == pytest.approx(5e-4)
    assert s.best == 2.0 and s.bad_epochs == 0
    s = plateau_update(s, 2.5)  # worse: halves again
    assert s.lr == pytest.approx(2.5e-4)
    s = plateau_update(s, 1.0)  # improves: unchanged
    assert s.lr == pytest.approx(2.5e-4) and s.best == 1.0


def test_plateau_improvement_must_beat_the_threshold():
    s = plateau_update(PlateauState(lr=1.0), 2.0)
    assert plateau_update(s, 2.0 * (1 - 1e-4), threshold=1e-3).lr == 0.5  # too small an improvement
    assert plateau_update(s, 2.0 * (1 - 1e-2), threshold=1e-3).lr == 1.0


def test_plateau_respects_patience():
    s = plateau_update(PlateauState(lr=1.0), 2.0, patience=2)
    s = plateau_update(s, 2.1, patience=2)
    assert (s.lr, s.bad_epochs) == (1.0, 1)
    s = plateau_update(s, 2.1, patience=2)
    assert (s.lr, s.bad_epochs) == (1.0, 2)
    s = plateau_update(s, 2.1, patience=2)  # the third bad epoch in a row: halve, restart the count
    assert (s.lr, s.bad_epochs) == (0.5, 0)
    s = plateau_update(s, 1.5, patience=2)  # an improvement resets the count
    s = plateau_update(s, 1.6, patience=2)
    assert (s.lr, s.bad_epochs) == (0.5, 1)


def test_plateau_never_goes_below_min_lr():
    s = PlateauState(lr=1e-3, best=1.0)
    lrs = []
    for _ in range(6):
        s = plateau_update(s, 5.0, min_lr=2e-4)
        lrs.append(s.lr)
    assert lrs == pytest.approx([5e-4, 2.5e-4, 2e-4, 2e-4, 2e-4, 2e-4])


def test_plateau_factor():
    s = plateau_update(PlateauState(lr=1.0, best=1.0), 1.0, factor=0.1)
    assert s.lr == pytest.approx(0.1)


def test_plateau_state_is_not_mutated():
    s = PlateauState(lr=1.0, best=1.0)
    plateau_update(s, 5.0)
    assert s == PlateauState(lr=1.0, best=1.0)
