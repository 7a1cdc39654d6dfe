"""The hyper-parameter search (model/tune.py) on tiny data: a few hundred images, 1-2 epochs."""

from __future__ import annotations

import numpy as np
import pytest

from model.data import Mnist
from model.registry import Registry
from model.train import TrainConfig, train
from model.tune import (
    FEEDBACK_VALIDATION_FRACTION,
    MIN_FEEDBACK_TO_SEARCH,
    TRAIN_VALIDATION_FRACTION,
    Budget,
    TrialRuns,
    TrialScore,
    accuracy,
    another_trial_fits,
    newest_slice,
    search_fine_tune,
    search_train,
    select_best,
    validation_split,
)
from tests.conftest import tiny_split

# One torch thread: on 2 shared cores, two threads made a 300-image epoch take 13 s, not 2 s.
TINY = TrainConfig(epochs=1, batch_size=64, augment=False, seed=3, threads=1)


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    """One embedded MLflow store for the module: each test reads only the runs it made."""
    from model.settings import ModelSettings

    directory = tmp_path_factory.mktemp("tune-mlflow")
    return Registry(ModelSettings(data_dir=directory, mlflow_tracking_uri=None))


def scored(number: int, acc: float, tiebreak: float = 0.0) -> TrialScore:
    return TrialScore(number, {"max_lr": 0.001 * number}, acc, tiebreak, seconds=1.0)


@pytest.fixture(scope="module")
def tiny(mnist):
    """300 MNIST training images, a parent trained on them, and 40 digits it never saw
    (turned a quarter turn) as labelled feedback."""
    x, y, x_test, y_test = tiny_split(mnist, 300, 40, seed=1)
    parent = train(x, y, TINY).net
    feedback_x = np.rot90(x_test, axes=(1, 2)).copy()
    return parent, x, y, feedback_x, y_test


def search_tiny(tiny, budget: Budget, runs: TrialRuns | None = None):
    parent, x, y, fx, fy = tiny
    return search_fine_tune(parent, x, y, fx, fy, TINY, 0.3, budget, runs)


# -- pure parts ------------------------------------------------------------------------------


def test_best_is_the_highest_accuracy_then_mnist_then_the_earliest():
    assert select_best([scored(1, 0.8), scored(2, 0.9), scored(3, 0.85)]).number == 2
    # Equal on feedback: the one that kept more MNIST wins.
    assert select_best([scored(1, 0.9, 0.97), scored(2, 0.9, 0.99)]).number == 2
    # Equal on both: the earliest, i.e. the default configuration, stays.
    assert select_best([scored(1, 0.9, 0.99), scored(2, 0.9, 0.99)]).number == 1
    with pytest.raises(ValueError, match="no trial"):
        select_best([])


def test_another_trial_starts_only_if_the_longest_so_far_would_end_in_budget():
    assert another_trial_fits(elapsed=0.0, durations=[], seconds=1.0)  # the first always runs
    assert another_trial_fits(elapsed=50.0, durations=[20.0, 30.0], seconds=80.0)
    assert not another_trial_fits(elapsed=50.0, durations=[20.0, 31.0], seconds=80.0)
    assert another_trial_fits(elapsed=1e6, durations=[1e6], seconds=None)


def test_validation_slices_hold_out_part_and_never_all():
    assert newest_slice(40, 0.25) == 10
    assert newest_slice(2, 0.25) == 1  # at least one held out ...
    assert newest_slice(3, 0.9) == 2  # ... and at least one left to train on
    with pytest.raises(ValueError, match="too few"):
        newest_slice(1, 0.25)
    fit, held = validation_split(100, 0.1, seed=0)
    assert len(held) == 10 and len(fit) == 90
    assert not set(fit) & set(held) and set(fit) | set(held) == set(range(100))
    again, _ = validation_split(100, 0.1, seed=0)
    other, _ = validation_split(100, 0.1, seed=1)
    np.testing.assert_array_equal(fit, again)
    assert not np.array_equal(fit, other)


def test_budget_rejects_nonsense():
    with pytest.raises(ValueError, match="at least 1 trial"):
        Budget(0)
    with pytest.raises(ValueError, match="positive"):
        Budget(2, seconds=0)


# -- the fine-tune search ----------------------------------------------------------------------


def test_fine_tune_search_starts_from_the_default_and_returns_the_best_network(tiny):
    _, x, y, fx, fy = tiny
    result = search_tiny(tiny, Budget(3, seed=0))

    assert [t.number for t in result.trials] == [1, 2, 3]
    assert result.trials[0].params == {"max_lr": TINY.max_lr, "epochs": 1, "extra_share": 0.3}
    assert len({tuple(t.params.values()) for t in result.trials}) == 3
    assert result.best == select_best(result.trials)
    assert result.config.max_lr == result.best.params["max_lr"]
    assert result.extra_share == result.best.params["extra_share"]
    # The returned network is the best trial's: it scores what the trial scored, on the newest
    # quarter of the feedback and the last fifth of the MNIST images, neither trained on.
    held = newest_slice(len(fy), FEEDBACK_VALIDATION_FRACTION)
    assert result.sizes == {
        "feedback_train": len(fy) - held,
        "feedback_validation": held,
        "mnist_train": 240,
        "mnist_validation": 60,
    }
    assert accuracy(result.result.net, fx[-held:], fy[-held:]) == result.best.accuracy
    assert accuracy(result.result.net, x[-60:], y[-60:]) == result.best.tiebreak


def test_the_time_budget_stops_before_a_trial_that_would_not_fit(tiny):
    result = search_tiny(tiny, Budget(5, seconds=0.001))
    assert len(result.trials) == 1  # the first trial always runs, none after it
    assert result.best.number == 1


def test_fine_tune_search_needs_enough_feedback(tiny):
    parent, x, y, fx, fy = tiny
    few = MIN_FEEDBACK_TO_SEARCH - 1
    with pytest.raises(ValueError, match=f"{few} labelled image"):
        search_fine_tune(parent, x, y, fx[:few], fy[:few], TINY, 0.3, Budget(2))


# -- the from-scratch search ---------------------------------------------------------------


def test_train_search_is_scored_on_a_split_of_train_and_is_seeded(mnist):
    x, y, _, _ = tiny_split(mnist, 300, 10, seed=2)
    first = search_train(x, y, TINY, Budget(2, seed=5))
    again = search_train(x, y, TINY, Budget(2, seed=5))
    other = search_train(x, y, TINY, Budget(2, seed=6))

    fit, held = validation_split(len(x), TRAIN_VALIDATION_FRACTION, seed=5)
    assert first.sizes == {"mnist_train": len(fit), "mnist_validation": len(held)}
    assert accuracy(first.result.net, x[held], y[held]) == first.best.accuracy
    assert first.best == select_best(first.trials)
    assert set(first.trials[1].params) == {"max_lr", "epochs", "weight_decay"}
    assert [(t.params, t.accuracy) for t in first.trials] == [
        (t.params, t.accuracy) for t in again.trials
    ]
    assert first.trials[1].params != other.trials[1].params


# -- MLflow ----------------------------------------------------------------------------------


def test_each_trial_is_a_nested_run_under_one_parent(registry, tiny):
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    runs = TrialRuns(registry.client, registry.experiment_id, "tune-test")
    result = search_tiny(tiny, Budget(2, seed=0), runs)

    found = registry.client.search_runs([registry.experiment_id])
    parent = next(r for r in found if r.info.run_id == result.parent_run_id)
    children = [r for r in found if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent.info.run_id]
    assert len(children) == 2
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tune-test"
    assert parent.data.params["best_trial"] == str(result.best.number)
    assert parent.data.params["feedback_validation"] == str(result.sizes["feedback_validation"])
    assert parent.data.metrics["trials_run"] == 2
    by_trial = {int(r.data.params["trial"]): r for r in children}
    assert {t.run_id for t in result.trials} == {r.info.run_id for r in children}
    for trial in result.trials:
        run = by_trial[trial.number]
        assert run.data.metrics["feedback_val_accuracy"] == pytest.approx(trial.accuracy)
        assert run.data.metrics["mnist_val_accuracy"] == pytest.approx(trial.tiebreak)
        assert float(run.data.params["max_lr"]) == pytest.approx(trial.params["max_lr"])
        assert "loss" in run.data.metrics  # the per-epoch history


def test_a_search_that_raises_leaves_its_parent_run_failed(registry):
    runs = TrialRuns(registry.client, registry.experiment_id, "tune-broken")
    with pytest.raises(RuntimeError, match="boom"), runs.search({"trials": 2}):
        raise RuntimeError("boom")
    assert registry.client.get_run(runs.parent_id).info.status == "FAILED"


# -- the loop's retrain ----------------------------------------------------------------------


def test_retrain_searches_only_when_asked_and_records_the_search(
    registry, tiny, mnist, monkeypatch
):
    import model.tune
    from model.registry import ModelVersionInfo
    from pipelines.settings import LoopSettings
    from pipelines.steps.retrain import FeedbackSplit, retrain

    parent, x, y, fx, fy = tiny
    small = Mnist(x, y, mnist.x_test[:200], mnist.y_test[:200])
    split = FeedbackSplit(fx, fy, fx[:8], fy[:8], since=None, until=None)
    champion = ModelVersionInfo(registry.name, "1", [], {}, run_id=None)

    def fine_tuned(run_id: str, **settings: object):
        loop = LoopSettings(retrain_epochs=1, **settings)
        version = retrain(registry, parent, champion, small, split, loop, run_id).version
        return registry.client.get_run(version.run_id).data.params, version

    plain, _ = fine_tuned("run-8")
    assert "search_run_id" not in plain  # retrain_trials defaults to 0: no search

    # The last trial wins, whatever it scored: so the default (trial 1) is not the one chosen,
    # and what is registered can be told apart from the default configuration.
    monkeypatch.setattr(model.tune, "select_best", lambda scores: scores[-1])
    params, version = fine_tuned("run-9", retrain_trials=2, retrain_search_seconds=600)
    search = registry.client.get_run(params["search_run_id"])
    assert search.info.run_name == "tune-run-9" and params["search_trials"] == "2"
    assert search.data.tags["registered_version"] == version.version
    # The registered run was fine-tuned with the configuration the search chose.
    assert params["max_lr"] == search.data.params["best_max_lr"]
    assert params["epochs"] == search.data.params["best_epochs"]
    assert params["extra_share"] == search.data.params["best_extra_share"]
    assert search.data.params["best_trial"] == "2" and params["extra_share"] != plain["extra_share"]
