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


def test_rmd17_official_split_files(tmp_path):
    from schnet_model.config import DatasetConfig
    from schnet_model.data.load import load_dataset

    root = tmp_path / "rmd17"
    (root / "npz_data").mkdir(parents=True)
    (root / "splits").mkdir()
    rng = np.random.default_rng(0)
    np.savez(root / "npz_data" / "rmd17_ethanol.npz", nuclear_charges=np.array([6, 6, 8, 1, 1, 1, 1, 1, 1], np.uint8),
             coords=rng.normal(0, 1.5, (30, 9, 3)), energies=rng.normal(-97000, 2, 30),
             forces=rng.normal(0, 10, (30, 9, 3)))
    (root / "splits" / "index_train_02.csv").write_text("\n".join(str(i) for i in range(0, 20)) + "\n")
    (root / "splits" / "index_test_02.csv").write_text("\n".join(str(i) for i in range(20, 30)) + "\n")
    ds = load_dataset(DatasetConfig(path=root / "npz_data" / "rmd17_ethanol.npz", rmd17_split=2, n_train=15, n_val=5))
    assert ds.test.tolist() == list(range(20, 30)) and ds.train_pool.tolist() == list(range(20))
    s = random_split(30, 15, 5, None, 0, ds.test, ds.train_pool)
    assert set(s.test.tolist()) == set(range(20, 30)) and not (set(s.train) | set(s.val)) & set(s.test.tolist())
    with pytest.raises(DataError, match="index_train_01.csv not found"):
        load_dataset(DatasetConfig(path=root / "npz_data" / "rmd17_ethanol.npz", rmd17_split=1))
    (root / "splits" / "index_test_03.csv").write_text("5\n99\n")
    (root / "splits" / "index_train_03.csv").write_text("1\n2\n")
    with pytest.raises(DataError, match=r"indices must lie in 0..29"):
        load_dataset(DatasetConfig(path=root / "npz_data" / "rmd17_ethanol.npz", rmd17_split=3))
