"""Splits: held-out test first, folds disjoint from it, official test sets, manifest audit."""

from __future__ import annotations

import numpy as np
import pytest

from schnet_model.data import DataError
from schnet_model.data.splits import Fold, SplitManifest, holdout, kfold, random_split


def test_kfold_partitions_the_pool_and_never_touches_test():
    pool, test = holdout(200, 50, seed=4)
    folds = kfold(pool, 5, seed=4)
    vals = np.concatenate([f.val for f in folds])
    assert sorted(vals.tolist()) == sorted(pool.tolist())  # every pool molecule validated exactly once
    for f in folds:
        assert not set(f.train) & set(f.val)
        assert not (set(f.train) | set(f.val)) & set(test.tolist())
        assert len(f.train) + len(f.val) == len(pool)
    assert [f.val.tolist() for f in kfold(pool, 5, seed=4)] == [f.val.tolist() for f in folds]  # seeded
    assert [f.val.tolist() for f in kfold(pool, 5, seed=5)] != [f.val.tolist() for f in folds]


def test_kfold_rejects_bad_k():
    with pytest.raises(DataError, match="k ≥ 2"):
        kfold(np.arange(10), 1, 0)
    with pytest.raises(DataError, match="at least 5 molecules"):
        kfold(np.arange(3), 5, 0)


def test_official_test_set_is_used_and_subsampled():
    official = np.arange(80, 100)
    s = random_split(100, 30, 10, None, seed=0, official_test=official)
    assert s.test.tolist() == official.tolist()
    assert not (set(s.train) | set(s.val)) & set(official.tolist())
    s2 = random_split(100, 30, 10, 5, seed=0, official_test=official)
    assert len(s2.test) == 5 and set(s2.test) <= set(official.tolist())
    pool = np.arange(0, 40)
    s3 = random_split(100, 30, 10, None, seed=0, official_test=official, official_pool=pool)
    assert set(s3.train) | set(s3.val) == set(pool.tolist())


def test_test_fraction_that_leaves_no_training_data():
    with pytest.raises(DataError, match="split asks for"):
        random_split(10, 5, 5, 1, seed=0)
    with pytest.raises(DataError, match="the test set leaves no training data"):
        random_split(10, 1, 1, None, seed=0, official_test=np.arange(10))


def test_manifest_round_trip_and_leak_audit(tmp_path):
    pool, test = holdout(60, 10, seed=1)
    m = SplitManifest("d.npz", "ab" * 32, 1, test=test, folds=kfold(pool, 3, 1))
    m.check_disjoint()
    m.write(tmp_path / "split.json")
    back = SplitManifest.from_json((tmp_path / "split.json").read_text())
    assert back.test.tolist() == test.tolist() and len(back.folds) == 3
    assert back.folds[2].val.tolist() == m.folds[2].val.tolist()
    leaky = SplitManifest("d.npz", "x", 1, test=test, folds=[Fold(np.append(pool, test[0]), pool[:3])])
    with pytest.raises(DataError, match="split leak: 1 test molecules in fold 0 train"):
        leaky.check_disjoint()
