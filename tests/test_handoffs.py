"""What crosses between the stages is a named type: the trial context, the sweep's record, a trial's report."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from orchestrator.search.context import TestLabels as Labels  # (a name pytest would try to collect)
from orchestrator.search.context import TrialClock, TrialContext, TrialData
from orchestrator.search.state import SWEEP_JSON, SweepState, SweepStateError
from orchestrator.spec.sweep import load_sweep_spec
from orchestrator.tracking.keys import TrialResult


def test_the_trial_context_derives_what_the_spec_says_and_survives_pickling():
    spec = load_sweep_spec(ROOT / "search_spaces" / "rmd17.yaml",
                           ["resources.cpus_per_fold=1", "resources.layout=stacked"])
    folds = [(np.arange(0, 8), np.arange(8, 10)), (np.arange(2, 10), np.arange(0, 2))]
    labels = {"test": Labels(np.zeros(3), np.zeros((9, 3)))}
    ctx = TrialContext(TrialData("ref", {"test": np.arange(10, 13)}, labels), spec.model_dump_json(), folds,
                       clock=TrialClock(deadline=123.0), screen=True)
    again = pickle.loads(pickle.dumps(ctx))  # as Ray's object store carries it to the trial
    assert again.spec == spec and again.k == 2 and again.screen and again.clock.deadline == 123.0
    assert again.layout == "stacked" and again.max_epochs == spec.max_epochs()
    assert again.objective_rho == spec.objective_rho() is not None  # rmd17.yaml searches training.rho
    with pytest.raises(AttributeError):  # frozen: a typo or a change fails where it is made, not in a remote actor
        ctx.screen = False  # type: ignore[misc]


def test_the_sweep_record_round_trips_and_a_foreign_file_is_one_line(tmp_path: Path):
    state = SweepState(name="s-1", spec_name="s", parent_run_id="r", tracking_uri="sqlite:////x.db", experiment="e",
                       created=1.0)
    assert state.tune_experiments == ["s-1"] and state.status == "running"
    state.rungs["screen"] = {"planned_s": 10.0, "measured_s": 12.0}
    state.save(tmp_path)
    assert SweepState.load(tmp_path / SWEEP_JSON) == state
    raw = json.loads((tmp_path / SWEEP_JSON).read_text())
    assert raw["status"] == "running" and raw["rungs"]["screen"]["measured_s"] == 12.0  # the keys users read
    (tmp_path / SWEEP_JSON).write_text(json.dumps({**raw, "added_by_a_newer_version": 1}))
    assert SweepState.load(tmp_path / SWEEP_JSON) == state
    (tmp_path / SWEEP_JSON).write_text("{}")
    with pytest.raises(SweepStateError, match=r"sweep\.json: not a sweep record \(missing name, spec_name"):
        SweepState.load(tmp_path / SWEEP_JSON)
    (tmp_path / SWEEP_JSON).write_text("[1")
    with pytest.raises(SweepStateError, match="not a readable sweep record"):
        SweepState.load(tmp_path / SWEEP_JSON)
    assert SweepState.status_of(tmp_path / SWEEP_JSON) is None


def test_a_trial_report_flattens_for_tune_and_reads_back():
    report = TrialResult({"val_loss_mean": 1.0}, [{"val_loss": 0.9, "node_id": "a"}, {"val_loss": 1.1, "node_id": "b"}])
    final = report.with_trial(epoch=3).with_folds([{"test_forces_mae": 0.5}, {"test_forces_mae": 0.7}])
    flat = final.flat()
    assert flat == {"val_loss_mean": 1.0, "epoch": 3,
                    "fold0/val_loss": 0.9, "fold0/node_id": "a", "fold0/test_forces_mae": 0.5,
                    "fold1/val_loss": 1.1, "fold1/node_id": "b", "fold1/test_forces_mae": 0.7}
    back = TrialResult.of({**flat, "training_iteration": 3, "config/model.n_filters": 64})  # Tune adds its own keys
    assert back.folds == final.folds and back.trial["epoch"] == 3 and back.trial["training_iteration"] == 3
    with pytest.raises(ValueError):  # one value per fold, or the report is wrong
        report.with_folds([{"x": 1}])


def test_the_clock_tells_a_cosine_how_many_epochs_are_left():
    """Screening: up to the final rung's training per fold; otherwise what the deadline and the trial's share allow,
    consistent with when ``out_of_time`` finalises."""
    import time

    assert TrialClock().epochs_left(started=0.0, epoch=3, epoch_wall=1.0, epoch_train=1.0) is None
    screen = TrialClock(horizon=100.0, train_allotment=20.0)
    assert screen.epochs_left(started=0.0, epoch=4, epoch_wall=9.0, epoch_train=2.0) == pytest.approx(46.0)
    now = time.time()
    clock = TrialClock(deadline=now + 106.0, finish_margin=5.0)
    left = clock.epochs_left(started=now, epoch=1, epoch_wall=10.0, epoch_train=9.0)
    assert left == pytest.approx(9.1, abs=0.05)  # 101 s at 10 s an epoch, the last one spent finishing
    for _ in range(int(left)):  # after the epochs left, and not before, out_of_time finalises
        assert not clock.out_of_time(now - 1e3, 10.0)
        clock = TrialClock(deadline=clock.deadline - 10.0, finish_margin=5.0)  # an epoch passes
    assert clock.out_of_time(now - 1e3, 10.0)
    shared = TrialClock(deadline=time.time() + 1e4, trial_seconds=50.0)
    assert shared.epochs_left(started=time.time() - 10.0, epoch=2, epoch_wall=10.0, epoch_train=9.0) == (
        pytest.approx(4.0, abs=0.05))


def test_a_trial_compiles_only_when_its_time_left_repays_the_compilation():
    """A cold torch.compile took 35 s of an 18-s final-rung share on a 2-core machine (the trial ended at a tenth of
    its cosine); a budgeted trial with less than COMPILE_PAYS_AFTER seconds ahead trains eagerly."""
    import time

    from orchestrator.search.context import COMPILE_PAYS_AFTER

    now = time.time()
    assert TrialClock().compile_pays(now) and TrialClock().seconds_left(now) is None
    assert not TrialClock(deadline=now + 1e4, trial_seconds=18.0).compile_pays(now)
    assert not TrialClock(deadline=now + COMPILE_PAYS_AFTER / 2).compile_pays(now)
    long = TrialClock(deadline=now + 1e4, trial_seconds=2 * COMPILE_PAYS_AFTER)
    assert long.compile_pays(now) and long.seconds_left(now) == pytest.approx(2 * COMPILE_PAYS_AFTER, abs=1.0)
    assert not long.compile_pays(now - 1.9 * COMPILE_PAYS_AFTER)  # most of its share spent
