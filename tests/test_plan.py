"""The budget plan (orchestrator/search/plan.py) and a trial's clock: pure arithmetic, no Ray started."""

from __future__ import annotations

import time

import numpy as np
import pytest

from orchestrator.search.context import TrialClock
from orchestrator.search.outcome import TrialSummary
from orchestrator.search.plan import MIN_SCREENED, USABLE, make_plan, top_configs


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
    assert 1 < big.final.configs <= min(4, big.screen.configs) and (
        "the 4 best screened configurations" in "\n".join(big.lines()))


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


def test_a_trial_keeps_back_its_measured_finalisation_not_one_epoch():
    """The aspirin failure: PaiNN's five folds took 19 s an epoch but 41 s to finalise (1,000 test molecules
    predicted), the clock kept one epoch back, and Tune's backstop killed the trial with nothing kept. The estimate
    scales the last validation (2 s for 200 molecules) to the refit, validation and test predictions."""
    from orchestrator.search.context import FINISH_SAFETY, finish_seconds

    finish = finish_seconds(2.0, n_train=800, n_val=200, n_test=1000)
    assert finish == pytest.approx(FINISH_SAFETY * 2.0 / 200 * (500 + 200 + 1000))  # 21 s: three times the val share
    assert finish_seconds(0.0, 800, 200, 1000) is None  # not measured (a fold stopped early reports 0)
    now = time.time()
    clock = TrialClock(deadline=now + 40.0)
    assert not clock.out_of_time(now, 10.0)  # one epoch kept: 2 × 10 s + 5 s fit in 40 s ...
    assert clock.out_of_time(now, 10.0, finish=30.0)  # ... the next epoch and a 30 s finalisation do not
    assert not clock.out_of_time(now, 10.0, finish=20.0)
    left = clock.epochs_left(started=now, epoch=1, epoch_wall=10.0, epoch_train=10.0, finish=30.0)
    assert left == pytest.approx((40.0 - 5.0 - 30.0) / 10.0, abs=0.01)  # the schedule decays over what is left
    assert clock.epochs_left(started=now, epoch=1, epoch_wall=10.0, epoch_train=10.0) == pytest.approx(2.5, abs=0.01)


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
    by_objective = [fold_metrics_summary([f], 0.01).trial["val_loss_mean"] for f in (worse_small_rho, better)]
    assert by_objective[1] < by_objective[0]
    assert by_objective[1] == pytest.approx(objective(0.01, 4.0, 0.95)) == pytest.approx(0.01 * 16 + 3 * 0.95 ** 2)


# -- equal compute: the allotment, the cost model, the extrapolation, the launch window --------------------------------

def test_screening_gives_every_configuration_the_same_seconds_so_a_costly_one_runs_fewer_epochs():
    """Equal compute, not equal epochs: each screened configuration trains for the plan's allotment of seconds; one
    four times as costly per epoch stops after about a quarter of the epochs (to the nearest epoch)."""
    plan = _plan(fold_epoch=1.0)
    assert plan.screen_each > 0 and plan.screen.epochs == round(plan.screen_each / 1.0)
    clock = TrialClock(train_allotment=plan.screen_each)

    def epochs(cost: float) -> int:
        spent, n = 0.0, 0
        while True:
            spent, n = spent + cost, n + 1
            if clock.allotment_spent(spent, cost):
                return n

    cheap, costly = epochs(1.0), epochs(4.0)
    assert abs(cheap * 1.0 - plan.screen_each) <= 0.5 and abs(costly * 4.0 - plan.screen_each) <= 2.0
    assert costly == pytest.approx(cheap / 4, abs=1)
    assert "s of training each (equal compute" in "\n".join(plan.lines())


def test_the_final_rungs_share_is_protected_no_screening_trial_starts_past_its_last_start():
    plan = _plan()
    assert 0 < plan.last_start < plan.screen.seconds
    assert plan.last_start + plan.screen_each + 5.0 == pytest.approx(plan.screen.seconds)  # the last one ends in time
    assert plan.horizon == pytest.approx(plan.final.seconds * 2.0 / (plan.final.configs * 5 * 1.0))


def test_a_launch_window_stops_the_searcher_after_its_last_start():
    from optuna.samplers import TPESampler
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.search.phases import LAUNCH_DEADLINES, LaunchWindow
    from orchestrator.spec.space import Distribution, define_by_run

    space = {"training.lr": Distribution.model_validate({"loguniform": [1e-4, 1e-2]})}
    searcher = OptunaSearch(space=define_by_run(space, {}), metric="m", mode="min", sampler=TPESampler(seed=0))
    window = LaunchWindow(searcher, 2, "exp-window")
    LAUNCH_DEADLINES["exp-window"] = time.time() - 1  # already past: the first wave (max_concurrent) starts anyway
    first = window.suggest("t1")
    assert isinstance(first, dict) and 1e-4 <= first["training.lr"] <= 1e-2
    window.on_trial_complete("t1", {"m": 1.0})
    assert isinstance(window.suggest("t2"), dict)
    window.on_trial_complete("t2", {"m": 1.0})
    assert window.suggest("t3") == Searcher.FINISHED
    LAUNCH_DEADLINES["exp-window"] = time.time() + 60  # a resumed rung's new last start
    assert isinstance(window.suggest("t4"), dict)
    import pickle

    assert pickle.loads(pickle.dumps(window)).experiment == "exp-window"  # Tune pickles it into its experiment state


def test_extrapolation_continues_a_power_law_and_never_a_curve_that_got_worse():
    from orchestrator.search.plan import MAX_SLOPE, extrapolate

    t = np.arange(1, 21, dtype=float)
    law = [(x, 10 * x ** -0.5) for x in t]
    assert extrapolate(law, 80.0) == pytest.approx(10 * 80 ** -0.5, rel=1e-6)
    assert extrapolate(law, 10.0) == pytest.approx(10 * 20 ** -0.5)  # a horizon inside the curve: its best
    flat_then_worse = [(x, 1.0 if x < 10 else 1.0 + 0.1 * x) for x in t]
    assert extrapolate(flat_then_worse, 100.0) == pytest.approx(1.0)  # best so far; slope clipped at 0
    cliff = [(x, 10 * x ** -3.0) for x in t]
    assert extrapolate(cliff, 40.0) == pytest.approx(10 * 20 ** -3.0 * 2 ** -MAX_SLOPE)  # no steeper than 1/t
    assert extrapolate([(1.0, 2.0), (2.0, 1.0)], 100.0) == 1.0  # too short a curve to fit: its best
    assert extrapolate([(1.0, float("nan"))], 10.0) is None


def test_a_screened_trial_ranks_by_its_loss_at_equal_compute_not_its_extrapolation():
    from orchestrator.search.plan import screen_score

    def t(i, loss, predicted, lr):
        return TrialSummary(f"t{i}", "screened", {"training.lr": lr}, loss, None, 5, {}, predicted=predicted)

    # b's curve, continued to the final rung's training, reaches lower; a is better after the same seconds: a
    a, b = t(0, 0.10, 0.08, 1e-3), t(1, 0.12, 0.05, 2e-3)
    assert top_configs([a, b], 1) == [{"training.lr": 1e-3}]
    assert screen_score(t(2, 0.3, None, 1e-4)) == 0.3
    assert screen_score(t(3, float("nan"), 0.2, 1e-4)) is None and top_configs([t(3, float("nan"), 0.2, 1e-4), b], 1) \
        == [{"training.lr": 2e-3}]


def test_the_cost_model_prices_by_size_and_calibrates_on_measured_epochs():
    from conftest import QUICKSTART_DATA

    from orchestrator.search.cost import EpochCost, data_cost
    from schnet_model import ModelConfig, TrainingConfig
    from schnet_model.config import DatasetConfig
    from schnet_model.data.load import load_dataset

    ethanol = load_dataset(DatasetConfig(path=str(QUICKSTART_DATA))).molecules  # 9 atoms
    cost = data_cost(ethanol.subset(np.arange(40)), 30, 10, [None, 2.0])
    assert cost.atoms == 9 and cost.pairs["none"] == 72 and 0 < cost.pairs["2"] < 72
    paper, train = ModelConfig(), TrainingConfig()
    big = ModelConfig(n_interactions=6, n_filters=128, n_atom_basis=128)
    small_batch = TrainingConfig(batch_size=8)
    assert cost.seconds(big, train) > 3 * cost.seconds(paper, train)
    assert cost.seconds(paper, small_batch) > cost.seconds(paper, train)
    assert cost.seconds(ModelConfig(cutoff=2.0), train) < cost.seconds(paper, train)
    cal = cost.calibrated([(paper, train, 2 * cost.units(paper, train)), (big, train, 2.2 * cost.units(big, train)),
                           (paper, small_batch, 50 * cost.units(paper, small_batch))])
    assert cal.scale == pytest.approx(2.2)  # the median ratio: one odd epoch does not move it
    assert EpochCost.from_dict(cal.as_dict()) == cal
    assert cost.calibrated([]) == cost


def test_the_costliest_configuration_of_a_space_is_named_in_the_plan():
    from orchestrator.search.cost import EpochCost
    from orchestrator.search.plan import costliest
    from orchestrator.spec.sweep import SweepSpec

    spec = SweepSpec.model_validate({"dataset": {"path": "x.npz"},
                                     "model": {"n_interactions": {"int": [2, 6]}, "n_filters": {"choice": [64, 128]}},
                                     "training": {"batch_size": {"choice": [8, 32]},
                                                  "lr": {"loguniform": [1e-4, 1e-3]}}})
    cost = EpochCost(800, 200, 21.0, {"none": 420.0})
    what, seconds = costliest(spec.space(), spec.materialize, cost)
    assert what == "6×128×64, batch 8" and seconds > cost.seconds(*spec.materialize({}))
    plan = _plan(cost=cost, costliest=(what, seconds / 100))
    assert "the costliest, 6×128×64, batch 8, ≈" in "\n".join(plan.lines())


def test_a_trial_with_no_time_to_start_is_not_started_and_tells_the_searcher_nothing():
    from orchestrator.search.outcome import METRIC
    from orchestrator.tracking.statuses import NOT_STARTED, NOT_STARTED_FLAG, trial_status

    assert trial_status(False, {METRIC: float("nan"), "epoch": 0, NOT_STARTED_FLAG: True}, True) == NOT_STARTED


def test_an_older_plan_in_sweep_json_still_loads():
    from orchestrator.search.plan import BudgetPlan

    d = _plan().as_dict()
    for key in ("screen_each", "horizon", "last_start", "screen_cpus", "cost", "costliest"):
        d.pop(key)
    assert BudgetPlan.from_dict(d).horizon == 0.0
