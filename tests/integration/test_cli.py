"""The ``digitloop`` command as a person runs it: JSON on stdout, logs on stderr, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

DIGITLOOP = str(Path(sys.executable).parent / "digitloop")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DIGITLOOP, *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )


def test_train_then_evaluate(data_dir: Path, tmp_path: Path, mnist):
    trained = run("train", "--epochs", "1", "--limit", "3000", "--json", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)  # exactly one JSON object on stdout
    assert summary["version"] == "1" and summary["aliases"] == ["champion"]
    assert summary["mnist_test_accuracy"] > 0.85
    # Registered with a novelty scorer calibrated on MNIST test: it flags the set share.
    assert abs(summary["novelty_share"] - 0.05) <= 0.005 and summary["novelty_threshold"] > 0
    assert "training on 3000" in trained.stderr
    assert (data_dir / "mlflow.db").exists()

    subset = tmp_path / "subset.npz"
    np.savez(subset, x=mnist.x_test[:500], y=mnist.y_test[:500])
    evaluated = run("evaluate", "--data", str(subset), "--model", "1", "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["n"] == 500 and result["model_version"] == "1"
    assert 0.85 < result["accuracy"] <= 1.0
    assert set(result["per_class"]) == {str(c) for c in range(10)}

    preprocessed = run("evaluate", "--data", str(subset), "--preprocess", "--json", cwd=tmp_path)
    assert preprocessed.returncode == 0, preprocessed.stderr
    assert abs(json.loads(preprocessed.stdout)["accuracy"] - result["accuracy"]) < 0.03

    listed = run("models", "--json", cwd=tmp_path)
    assert [v["version"] for v in json.loads(listed.stdout)["versions"]] == ["1"]


def test_train_with_trials_registers_the_best_of_a_search(data_dir: Path, tmp_path: Path):
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    args = ("train", "--trials", "2", "--epochs", "1", "--limit", "300", "--no-augment")
    trained = run(*args, "--json", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["version"] == "1" and summary["trials_run"] == 2
    assert "trial 2/2" in trained.stderr and "mnist_val_accuracy" in trained.stderr

    client = MlflowClient(tracking_uri=f"sqlite:///{data_dir / 'mlflow.db'}")
    search = client.get_run(summary["search_run_id"])
    assert search.data.tags["registered_version"] == "1"
    assert search.data.params["best_trial"] == str(summary["best_trial"])
    children = client.search_runs(
        [search.info.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{search.info.run_id}'"
    )
    assert len(children) == 2
    registered = client.get_run(summary["run_id"]).data.params
    assert registered["search_run_id"] == search.info.run_id
    assert float(registered["max_lr"]) == summary["best_params"]["max_lr"]

    alone = run("train", "--timeout", "60", cwd=tmp_path)
    assert alone.returncode == 2 and "--trials" in alone.stderr


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 28, 28), np.uint8)}, "missing key"),
        ({"x": np.zeros((2, 32, 32), np.uint8), "y": np.zeros(2, np.int64)}, "shape"),
        ({"x": np.zeros((2, 28, 28), np.float64), "y": np.zeros(2, np.int64)}, "dtype"),
        ({"x": np.zeros((2, 28, 28), np.uint8), "y": np.array([1, 11])}, "0-9"),
    ],
)
def test_evaluate_rejects_bad_files_with_one_line_and_exit_2(data_dir, tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    result = run("evaluate", "--data", str(path), "--json", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_evaluate_without_a_model_says_how_to_get_one(data_dir, tmp_path):
    result = run("evaluate", "--json", cwd=tmp_path)
    assert result.returncode == 2
    assert "digitloop train" in result.stderr


def test_styles_writes_evaluate_compatible_files(data_dir, tmp_path):
    result = run(
        "data", "styles", "--n", "20", "--out", str(tmp_path / "styles"), "--json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout)["files"]
    from model.data import load_labelled_npz

    for path in files.values():
        x, y = load_labelled_npz(path)
        assert x.shape == (20, 28, 28) and len(y) == 20


def test_loop_calibrate_measures_the_canary_decision(tmp_path):
    result = run("loop", "calibrate", "--canaries", "20", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {(r["labelling"], r["challenger"]): r for r in report["rows"]}
    assert set(rows) == {
        (labelling, challenger)
        for labelling in ("one answer in five", "corrections only")
        for challenger in ("2 points worse", "equal", "5 points better")
    }
    for row in rows.values():
        outcomes = row["promoted"] + row["rolled_back"] + row["out_of_budget"] + row["undecided"]
        assert outcomes == row["canaries"] == 20
    assert rows["one answer in five", "5 points better"]["promoted"] >= 17
    assert rows["one answer in five", "2 points worse"]["promoted"] <= 2
    assert report["settings"]["false_promotion_rate"] == 0.05
