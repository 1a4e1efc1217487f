"""The budget plan (orchestrator/search/plan.py) and a trial's clock: pure arithmetic, no Ray started."""

from __future__ import annotations

import time

import numpy as np
import pytest

from orchestrator.search.outcome import TrialSummary
from orchestrator.search.plan import MIN_SCREENED, USABLE, make_plan, top_configs
from orchestrator.search.trial import TrialClock


def _plan(budget=1500.0, fold_epoch=1.0, **kw):
    args = dict(cpus=2.0, k=5, screen_cpus=1.0, screen_concurrent=2, final_cpus=2.0, final_concurrent=1,
                max_epochs=2000, num_samples=30, grace=50)
    return make_plan(budget, fold_epoch, **{**args, **kw})


def test_a_25_minute_budget_on_2_cores_screens_at_least_10_configurations_and_fits_the_budget():
    plan = _plan(baseline_final=True)
    assert plan.screen.configs >= MIN_SCREENED and plan.screen.folds == 1 and 1 <= plan.screen.epochs <= 50
    assert plan.final.folds == 5 and 2 <= plan.final.configs <= plan.screen.configs + 1
    assert plan.screen.seconds + plan.final.seconds == pytest.approx(USABLE * 1500, rel=1e-6)
    # the finalists share the final rung's time when they run one after another
    assert plan.trial_seconds == pytest.approx(plan.final.seconds / plan.final.configs)
    text = "\n".join(plan.lines())
    assert "configurations × fold 0" in text and "the paper configuration + the" in text and "× 5 folds" in text


def test_without_a_privileged_baseline_the_final_rungs_time_goes_to_the_best_screened():
    """search.baseline: screen (the default): the paper configuration is a finalist only if it screens among the best,
    so a budget that trains one k-fold trial to max_epochs gives it all the final rung's time."""
    plan = _plan()
    assert not plan.baseline_final and plan.final.configs == 1 and plan.trial_seconds is None
    assert "rung 2, final: the best screened configuration × 5 folds" in "\n".join(plan.lines())
    big = _plan(budget=1e6)  # time for several finalists: at most MAX_FINALISTS, never more than were screened
    assert 1 < big.final.configs <= min(4, big.screen.configs) and "the 4 best screened configurations" in "\n".join(big.lines())


def test_a_slow_epoch_lowers_the_screening_epochs_before_the_number_of_configurations():
    fast, slow = _plan(fold_epoch=1.0), _plan(fold_epoch=8.0)
    assert slow.screen.epochs < fast.screen.epochs
    assert slow.screen.configs >= MIN_SCREENED  # 500 s of screening / 10 configurations / 8 s → 6 epochs each
    tiny = _plan(budget=60.0, fold_epoch=10.0)  # not even 10 one-epoch screens fit: as many as fit, at least one
    assert tiny.screen.epochs == 1 and 1 <= tiny.screen.configs < MIN_SCREENED


def test_the_plan_never_screens_more_configurations_than_the_spec_asks():
    plan = _plan(num_samples=4)
    assert plan.screen.configs == 4 and plan.final.configs <= 5
    assert plan.screen.epochs <= 50  # no more than ASHA's grace period: the rest goes to the final rung


def test_the_plan_round_trips_through_sweep_json():
    from orchestrator.search.plan import BudgetPlan

    plan = _plan()
    assert BudgetPlan.from_dict(plan.as_dict()) == plan


def test_top_configs_rank_by_the_screening_loss_and_leave_out_the_paper_configuration():
    def t(i, loss, lr):
        return TrialSummary(f"t{i}", "screened", {"training.lr": lr}, loss, None, 5, {})

    trials = [t(0, 0.5, 1e-4), t(1, 0.2, 3e-4), t(2, np.nan, 1e-3), t(3, 0.1, 5e-4), t(4, 0.3, 1e-4)]
    assert top_configs(trials, 2) == [{"training.lr": 5e-4}, {"training.lr": 3e-4}]
    assert top_configs(trials, 3, exclude={"training.lr": 3e-4}) == [{"training.lr": 5e-4}, {"training.lr": 1e-4}]


def test_a_trial_clock_finalises_before_the_deadline_and_within_its_share():
    now = time.time()
    assert not TrialClock().out_of_time(now - 1e6, 100.0)  # no budget: never
    clock = TrialClock(deadline=now + 30.0)
    assert not clock.out_of_time(now, 5.0)  # 2 × 5 s + 5 s margin fit in 30 s
    assert clock.out_of_time(now, 13.0)  # the next epoch and finalising would not
    share = TrialClock(trial_seconds=60.0)
    assert not share.out_of_time(now - 40.0, 10.0) and share.out_of_time(now - 55.0, 10.0)
    assert TrialClock(deadline=now + 10.0, epoch_seconds=5.0).no_time_to_start()
    assert not TrialClock(deadline=now + 100.0, epoch_seconds=5.0).no_time_to_start()
    assert not TrialClock(deadline=now + 1.0).no_time_to_start()  # no estimate: it runs one epoch and finalises


def test_a_searched_rho_ranks_trials_by_one_objective_not_their_own_losses():
    """Each trial's loss ρ·E² + F² rewards a small ρ whatever the accuracy; with ρ searched the CV objective uses
    one ρ (search.objective_rho, the paper's 0.01) for every trial."""
    from orchestrator.search.folds import FoldEpoch, fold_metrics_summary, objective
    from orchestrator.spec.sweep import SweepSpec

    base = {"dataset": {"path": "x.npz"}, "training": {"lr": {"loguniform": [1e-4, 1e-3]}}}
    assert SweepSpec.model_validate(base).objective_rho() is None
    searched = SweepSpec.model_validate({**base, "training": {"rho": {"loguniform": [1e-3, 1e-1]}}})
    assert searched.objective_rho() == 0.01

    def fold(rho, e_rmse, f_rmse):  # its own validation loss, with its own ρ
        return FoldEpoch(1, rho * e_rmse ** 2 + 3 * f_rmse ** 2, 0.0, 0.0, e_rmse, f_rmse, 0.0, 1e-3, 1.0, 0.0, False)

    worse_small_rho, better = fold(1e-3, 10.0, 1.0), fold(1e-1, 4.0, 0.95)
    assert worse_small_rho.val_loss < better.val_loss  # by their own losses the worse model wins
    by_objective = [fold_metrics_summary([f], 0.01)["val_loss_mean"] for f in (worse_small_rho, better)]
    assert by_objective[1] < by_objective[0]
    assert by_objective[1] == pytest.approx(objective(0.01, 4.0, 0.95)) == pytest.approx(0.01 * 16 + 3 * 0.95 ** 2)
