"""One configuration path (settings -> the DAG's train step and bench.quality), tuning on validation
data, its schedule, EASE and the strict gate."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pandas as pd
import pytest

from bench import quality
from feedloop.settings import MlflowSettings, ModelSettings, Settings
from models import baselines, data, train, tuning
from models.two_tower import TowerConfig

SMALL = {"embedding_dim": 8, "hash_buckets": 2_000, "history_length": 10, "uniform_negatives": 16,
         "hidden_units": 16, "epochs": 2, "batch_size": 64, "learning_rate": 0.01, "average_epochs": 0}


def _pairs(n_users=40, n_items=30, per_user=8, seed=0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Users who like items of their own group (4 groups): something to learn."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        group = u % 4
        liked = [i for i in range(n_items) if i % 4 == group]
        for n, i in enumerate(rng.choice(liked, size=min(per_user, len(liked)), replace=False)):
            rows.append((f"u{u}", f"i{i}", 1.0, 1_000 * (u * per_user + n)))
    pairs = pd.DataFrame(rows, columns=["user_id", "item_id", "weight", "ts"])
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(n_users)], "gender": "F", "age": 30,
                          "interests": [[f"g{u % 4}"] for u in range(n_users)]})
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "category": [f"g{i % 4}" for i in range(n_items)]})
    return pairs, users, items


def test_every_tower_field_is_a_setting_and_reaches_the_model():
    ms = ModelSettings()
    assert set(tuning.tower_fields()) <= set(ModelSettings.model_fields), "a TowerConfig field has no setting"
    params = tuning.base_params(ms)
    config = TowerConfig(**params["config"])
    assert {f.name: getattr(config, f.name) for f in fields(TowerConfig)} == {
        name: getattr(ms, name) for name in tuning.tower_fields()}
    assert {k: params[k] for k in tuning.TRAINING_FIELDS} == {k: getattr(ms, k) for k in tuning.TRAINING_FIELDS}


class Captured(Exception):
    def __init__(self, params):
        super().__init__("captured")
        self.params = params


def _capture_fit(monkeypatch) -> None:
    def fit(train, user_features, catalogue, params, log=print, on_epoch=None):
        raise Captured(params)

    monkeypatch.setattr(tuning, "fit", fit)


@pytest.mark.parametrize("tune", [True, False])
def test_the_dag_and_the_benchmark_train_the_same_configuration(monkeypatch, tmp_path, tune):
    """The first model either path trains (the search's first trial, or the final fit) has the same parameters,
    and those are the settings' (with a per-deployment override applied)."""
    pairs, users, items = _pairs()
    ms = ModelSettings(embedding_dim=48, tune=tune)  # an override, as feedloop.yaml would set it
    settings = Settings(model=ms, mlflow=MlflowSettings(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    fit_part, holdout = data.time_split(pairs)
    _capture_fit(monkeypatch)

    with pytest.raises(Captured) as dag:
        train.train_and_register(fit_part, holdout, users, items, "2026-11-30", settings, log=lambda _: None)
    user_features, catalogue = data.user_features(users), data.catalogue(items, pairs)
    with pytest.raises(Captured) as bench:
        quality.two_tower(fit_part, holdout, user_features, catalogue, ms,
                          tuning.validation_split(ms.validation_share, 0, by_time=False))
    assert dag.value.params == bench.value.params == tuning.base_params(ms)
    assert dag.value.params["config"]["embedding_dim"] == 48


def test_search_starts_from_the_settings_and_keeps_the_best_validation_score():
    pairs, users, items = _pairs()
    base = tuning.with_overrides(tuning.base_params(ModelSettings()), SMALL)
    seen = []

    def split(rows):
        seen.append(len(rows))
        return data.time_split(rows, 0.25)

    result = tuning.search(pairs, data.user_features(users), data.catalogue(items, pairs), base, split, trials=3,
                           budget_s=600, log=lambda _: None)
    assert seen == [len(pairs)]  # the validation split is carved out of the pairs it was given, once
    assert len(result.trials) == 3
    first = result.trials[0]["params"]
    assert first == {k: (base["config"] | base)[k] for k in first}  # trial 1: the configured parameters
    assert result.base_score == result.trials[0]["value"]
    assert result.best_score == max(t["value"] for t in result.trials)
    assert result.params == tuning.with_overrides(base, result.trials[result.best_trial]["params"])


def test_big_days_train_fewer_epochs_under_the_examples_cap():
    params = tuning.with_overrides(tuning.base_params(ModelSettings()), {"epochs": 24, "average_epochs": 10,
                                                                         "train_max_examples": 2_000_000})
    assert tuning.capped_epochs(params, 75_000, print) == (24, params["config"])  # ML-100K's size: as configured
    epochs, config = tuning.capped_epochs(params, 345_000, lambda _: None)  # a 1M-event day
    assert (epochs, config["average_epochs"]) == (5, 2)
    assert epochs * 345_000 <= 2_000_000
    assert tuning.capped_epochs(params, 5_000_000, lambda _: None)[0] == 2  # never fewer than 2
    uncapped = tuning.with_overrides(params, {"train_max_examples": 0})
    assert tuning.capped_epochs(uncapped, 5_000_000, print)[0] == 24


def test_trials_on_a_big_day_run_on_a_sample_of_whole_users():
    pairs, _, _ = _pairs(n_users=200, per_user=8)
    sample = tuning.tuning_sample(pairs, 400, seed=1)
    assert 300 <= len(sample) <= 400
    users = set(sample["user_id"])
    assert len(sample) == len(pairs[pairs["user_id"].isin(users)])  # every pair of a sampled user
    assert tuning.tuning_sample(pairs, 400, seed=1).equals(sample)  # seeded
    assert tuning.tuning_sample(pairs, 0).equals(pairs) and tuning.tuning_sample(pairs, 10_000).equals(pairs)


def test_the_budget_counts_the_trial_that_would_run_next(monkeypatch):
    """A trial that would end past the budget (by the longest so far) is not started."""
    pairs, users, items = _pairs()
    base = tuning.with_overrides(tuning.base_params(ModelSettings()), SMALL)
    clock = {"now": 0.0}
    monkeypatch.setattr(tuning.time, "perf_counter", lambda: clock["now"])
    real_fit = tuning.fit

    def slow_fit(*args, **kwargs):
        clock["now"] += 40.0  # each trial "takes" 40 s
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(tuning, "fit", slow_fit)
    result = tuning.search(pairs, data.user_features(users), data.catalogue(items, pairs), base,
                           lambda rows: data.time_split(rows, 0.25), trials=8, budget_s=100, log=lambda _: None)
    assert len(result.trials) == 2  # 40 + 40; a third would end at 120 > 100
    assert [t["seconds"] for t in result.trials] == [40.0, 40.0]


def _searched_run(client, experiment_id, ds, items, key, choice):
    run = client.create_run(experiment_id, tags={"tuning": "searched", "tuning_key": key, "ds": ds,
                                                 "items": str(items), "tuning_choice": tuning_json(choice)})
    client.set_terminated(run.info.run_id)


def tuning_json(choice):
    import json

    return json.dumps(choice)


def test_a_search_is_reused_for_a_week_on_a_similar_catalogue_and_the_same_settings(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("t")
    ms = ModelSettings()
    key = train.tuning_key(ms)
    _searched_run(client, experiment, "2026-11-20", 1_000, key, {"epochs": 5})
    _searched_run(client, experiment, "2026-11-25", 1_000, "another-key", {"epochs": 6})
    quiet = {"log": lambda _: None}
    assert train.recent_choice(client, experiment, "2026-11-26", 1_500, key, ms, **quiet) == {"epochs": 5}
    assert train.recent_choice(client, experiment, "2026-11-27", 1_000, key, ms, **quiet) is None  # 7 days old
    assert train.recent_choice(client, experiment, "2026-11-21", 2_000, key, ms, **quiet) is None  # catalogue 2x
    assert train.recent_choice(client, experiment, "2026-11-19", 1_000, key, ms, **quiet) is None  # searched later
    assert train.tuning_key(ModelSettings(embedding_dim=32)) != key  # a changed setting means a new search
    assert train.recent_choice(client, experiment, "2026-11-21", 1_000, key, ModelSettings(tune=False), **quiet) is None


def test_ease_is_the_closed_form_and_tuned_on_validation():
    pairs, _, items = _pairs(per_user=6)
    item_ids = items["item_id"].tolist()
    ease = baselines.Ease(pairs, item_ids)
    users = sorted(pairs["user_id"].unique())
    x = np.zeros((len(users), len(item_ids)))
    for u, i in pairs[["user_id", "item_id"]].itertuples(index=False):
        x[users.index(u), item_ids.index(i)] = 1.0
    p = np.linalg.inv(x.T @ x + 30.0 * np.eye(len(item_ids)))
    expected = np.eye(len(item_ids)) - p / np.diag(p)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(ease.weights(30.0), expected, atol=1e-9)
    np.testing.assert_allclose(ease.scores(users, 30.0), x @ expected, atol=1e-9)

    lam, trials = baselines.tune_ease(pairs, item_ids, lambda rows: data.random_split(rows, 0.25, 1),
                                      lambdas=(1.0, 10.0, 1e6), log=lambda _: None)
    assert [t["lambda"] for t in trials] == [1.0, 10.0, 1e6]
    assert lam == max(trials, key=lambda t: t["value"])["lambda"]
    fit_part, validation = data.random_split(pairs, 0.25, 1)
    assert baselines.Ease(fit_part, item_ids).evaluate(validation, lam)["ndcg10"] > 0.3  # it learned the groups


def test_ease_refuses_a_catalogue_beyond_its_limit():
    pairs = pd.DataFrame({"user_id": ["u"], "item_id": ["i0"], "weight": [1.0]})
    with pytest.raises(ValueError, match="EASE skipped: 20,001 items"):
        baselines.Ease(pairs, [f"i{n}" for n in range(baselines.EASE_MAX_ITEMS + 1)])


def test_the_gate_promotes_only_a_strictly_better_version():
    assert train.beats({"ndcg10": 0.31}, {"ndcg10": 0.30}, "3") == (True, "ndcg10 0.3100 > champion v3 0.3000")
    promote, reason = train.beats({"ndcg10": 0.30}, {"ndcg10": 0.30}, "3")
    assert not promote and reason == "ndcg10 0.3000 <= champion v3 0.3000"
    assert not train.beats({"ndcg10": 0.29}, {"ndcg10": 0.30}, "3")[0]


def test_a_train_try_is_keyed_by_its_day_and_dag_run(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CTX_DAG_RUN_ID", raising=False)
    assert train.attempt_key("2026-11-30") is None  # by hand: every run trains
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "scheduled__2026-11-30T00:00:00+00:00")
    assert train.attempt_key("2026-11-30") == "2026-11-30|scheduled__2026-11-30T00:00:00+00:00"
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__x' or '1'='1")  # not pasted into a search filter
    assert train.attempt_key("2026-11-30") is None


def test_a_baseline_search_is_reused_by_its_own_grid_key(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("t")
    ms = ModelSettings()
    ease_key = baselines.grid_key("ease", baselines.EASE_LAMBDAS)
    als_key = baselines.grid_key("als", baselines.ALS_GRID)
    assert len({ease_key, als_key, train.tuning_key(ms)}) == 3
    assert baselines.grid_key("ease", baselines.EASE_LAMBDAS[:3]) != ease_key  # a changed grid searches again
    _searched_run(client, experiment, "2026-11-20", 1_000, ease_key, 1600.0)
    _searched_run(client, experiment, "2026-11-20", 1_000, als_key, baselines.ALS_GRID[2])
    quiet = {"log": lambda _: None}
    assert train.recent_choice(client, experiment, "2026-11-22", 1_000, ease_key, ms, **quiet) == 1600.0
    assert train.recent_choice(client, experiment, "2026-11-22", 1_000, als_key, ms, **quiet) == baselines.ALS_GRID[2]
    assert train.recent_choice(client, experiment, "2026-11-28", 1_000, als_key, ms, **quiet) is None  # a week on
