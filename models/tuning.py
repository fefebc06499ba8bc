"""The one path from settings to a trained two-tower model, with tuning on validation data.

Every caller that trains the model the platform ships goes through here: the DAG's
``train`` step (:func:`models.train.train_and_register`), ``bench.quality``,
``bench.training``, ``bench.closed_loop`` and, for its champion's shape, the online
learner. So the figure the benchmark reports is the figure of the model the DAG trains.

- :func:`base_params`: the settings' model section as training parameters
  (``{"config": {TowerConfig fields}, "epochs", "batch_size", "learning_rate",
  "final_learning_rate"}``).
- :func:`search`: a bounded Optuna search (TPE sampler, seeded; the base parameters are
  its first trial, so it never chooses something that validates worse than them) on a
  validation split carved out of the *training* pairs by the caller's protocol. The
  holdout the gate and the benchmark score on is never seen.
- :func:`train_shipped`: search (or reuse a recent search's choice), then fit on all the
  training pairs with the chosen parameters.

The search space is small on purpose: the knobs that moved NDCG@10 on validation in
docs/model.md (epochs, learning rate, embedding size, softmax temperature, logQ weight,
history dropout). Each trial is a whole training run, so the budget is counted in trials
and seconds (``model.tune_trials``, ``model.tune_budget_s``, the running trial included),
and on a day bigger than ``model.tune_max_pairs`` the trials run on a sample of its users.
Every fit stops at ``model.train_max_examples`` (epochs x pairs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pandas as pd

from models import data

K = 10
METRIC = f"ndcg{K}"
TRAINING_FIELDS = ("epochs", "batch_size", "learning_rate", "final_learning_rate", "train_max_examples")

Split = Callable[[pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]


def tower_fields() -> tuple[str, ...]:
    from models.two_tower import TowerConfig

    return tuple(f.name for f in fields(TowerConfig))


def base_params(model_settings) -> dict:
    """The settings' model section as training parameters: every TowerConfig field, then the training knobs."""
    from models.two_tower import TowerConfig

    return {"config": asdict(TowerConfig.from_settings(model_settings)),
            **{name: getattr(model_settings, name) for name in TRAINING_FIELDS}}


def with_overrides(params: dict, overrides: dict) -> dict:
    """``params`` with flat overrides applied (a TowerConfig field goes into ``config``)."""
    config = dict(params["config"])
    out = {k: v for k, v in params.items() if k != "config"}
    for name, value in overrides.items():
        (config if name in config else out)[name] = value
    return {"config": config, **out}


def flat(params: dict) -> dict:
    """One level, for MLflow params and logs."""
    return {**params["config"], **{k: v for k, v in params.items() if k != "config"}}


def validation_split(share: float, seed: int = 0, by_time: bool = True) -> Split:
    """The validation protocol, mirroring the holdout's: the latest ``share`` of the training pairs by
    time (the DAG's holdout is the latest pairs), or a seeded random ``share`` of each user's pairs
    (bench.quality's holdout protocol)."""
    if by_time:
        return lambda pairs: data.time_split(pairs, share)
    return lambda pairs: data.random_split(pairs, share, seed)


def too_small_to_search(train: pd.DataFrame, split: Split, model_settings, log: Callable[[str], None] = print
                        ) -> bool:
    """Whether the validation split has fewer pairs than ``tune_min_validation_pairs`` (then: no search)."""
    n = len(split(train)[1])
    if n >= model_settings.tune_min_validation_pairs:
        return False
    log(f"tuning: {n:,} validation pairs < model.tune_min_validation_pairs "
        f"({model_settings.tune_min_validation_pairs:,}): no search, the configured parameters")
    return True


def fit(train: pd.DataFrame, user_features: pd.DataFrame, catalogue: pd.DataFrame, params: dict,
        log: Callable[[str], None] = print, on_epoch=None):
    """A TwoTower trained with ``params``; returns ``(model, losses)``."""
    from models.two_tower import TowerConfig, TwoTower

    epochs, config = capped_epochs(params, len(train), log)
    model = TwoTower(TowerConfig(**config))
    losses = model.fit(train, user_features, catalogue, epochs, params["batch_size"],
                       params["learning_rate"], on_epoch=on_epoch, log=log,
                       final_learning_rate=params.get("final_learning_rate"))
    return model, losses


def capped_epochs(params: dict, n_pairs: int, log: Callable[[str], None] = print) -> tuple[int, dict]:
    """``(epochs, config)`` under ``train_max_examples``: the epochs cut so that epochs x pairs stays within
    it (at least 2), and ``average_epochs`` cut in the same proportion. 0 or absent: no cap."""
    epochs, config, cap = params["epochs"], params["config"], params.get("train_max_examples") or 0
    if cap <= 0 or epochs * n_pairs <= cap:
        return epochs, config
    capped = max(2, cap // max(n_pairs, 1))
    if capped >= epochs:
        return epochs, config
    average = config.get("average_epochs", 0)
    config = {**config, "average_epochs": min(average, max(1, round(average * capped / epochs))) if average else 0}
    log(f"train: {epochs} epochs x {n_pairs:,} pairs > model.train_max_examples ({cap:,}): {capped} epochs, "
        f"averaging the last {config['average_epochs']}")
    return capped, config


def tuning_sample(pairs: pd.DataFrame, max_pairs: int, seed: int = 0) -> pd.DataFrame:
    """The pairs of a seeded random share of the users, about ``max_pairs`` of them (all when fewer or 0):
    what the search's trials train and validate on, so that a trial costs about as much on a big day as on
    ML-100K (where the search space was set), whatever the day's size."""
    if max_pairs <= 0 or len(pairs) <= max_pairs:
        return pairs
    users = pairs["user_id"].unique()
    rng = np.random.default_rng(seed)
    keep = rng.permutation(users)[:max(1, int(len(users) * max_pairs / len(pairs)))]
    return pairs[pairs["user_id"].isin(set(keep))]


def suggest(trial, base: dict) -> dict:
    """The search space around ``base``: the knobs that moved validation NDCG (docs/model.md)."""
    cfg, rate = base["config"], base["learning_rate"]
    return {
        "epochs": trial.suggest_int("epochs", max(2, base["epochs"] // 3), max(4, base["epochs"] * 3 // 2)),
        # a learning rate that is not positive is searched as given: the search does not repair a broken setting
        "learning_rate": trial.suggest_float("learning_rate", rate / 4, rate * 4, log=True) if rate > 0 else rate,
        "embedding_dim": trial.suggest_categorical("embedding_dim", sorted({32, 64, 128, cfg["embedding_dim"]})),
        "temperature": trial.suggest_float("temperature", 0.02, 0.2, log=True),
        "log_q_weight": trial.suggest_float("log_q_weight", 0.0, 3.0),
        "history_dropout": trial.suggest_float("history_dropout", 0.0, 0.8),
    }


@dataclass
class SearchResult:
    """The chosen parameters and how they were chosen (logged to MLflow by the train step)."""

    params: dict
    base_score: float
    best_score: float
    trials: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    validation_pairs: int = 0

    def summary(self) -> str:
        changed = self.trials[self.best_trial]["params"] if self.trials else {}
        return (f"tuning: {len(self.trials)} trials in {self.seconds:.0f} s on {self.validation_pairs:,} validation "
                f"pairs; {METRIC} base {self.base_score:.4f} -> chosen {self.best_score:.4f} {changed}")

    @property
    def best_trial(self) -> int:
        return int(np.argmax([t["value"] for t in self.trials])) if self.trials else 0


def search(train: pd.DataFrame, user_features: pd.DataFrame, catalogue: pd.DataFrame, base: dict, split: Split,
           trials: int, budget_s: float, seed: int = 0, log: Callable[[str], None] = print,
           max_pairs: int = 0) -> SearchResult:
    """Choose training parameters on a validation split of ``train`` (of :func:`tuning_sample`'s users when
    ``train`` has more than ``max_pairs``): at most ``trials`` trials, and none that would end after
    ``budget_s`` seconds by the trials so far (the first trial, ``base``, always runs). Each trial trains
    on the sample minus the validation pairs and is scored by NDCG@10 on them."""
    import optuna

    sample = tuning_sample(train, max_pairs, seed)
    if len(sample) < len(train):
        log(f"tuning: trials on {sample['user_id'].nunique():,} users' {len(sample):,} pairs of {len(train):,} "
            f"(model.tune_max_pairs {max_pairs:,})")
    fit_part, validation = split(sample)
    if fit_part.empty or validation.empty:
        log("tuning: too few pairs for a validation split; keeping the configured parameters")
        return SearchResult(params=base, base_score=float("nan"), best_score=float("nan"))
    started = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    first = {"epochs": base["epochs"], "learning_rate": base["learning_rate"], **{
        k: base["config"][k] for k in ("embedding_dim", "temperature", "log_q_weight", "history_dropout")}}
    study.enqueue_trial(first)
    records: list[dict] = []

    def objective(trial) -> float:
        overrides = suggest(trial, base)
        t0 = time.perf_counter()
        model, _ = fit(fit_part, user_features, catalogue, with_overrides(base, overrides), log=lambda _: None)
        score = model.evaluate(fit_part, validation, user_features, catalogue, K)[METRIC]
        records.append({"trial": trial.number, "value": round(float(score), 5), "params": overrides,
                        "seconds": round(time.perf_counter() - t0, 1)})
        log(f"tuning trial {trial.number + 1}/{trials}: validation {METRIC} {score:.4f} {overrides} "
            f"({records[-1]['seconds']} s)")
        return score

    def within_budget(study, _trial) -> None:
        # the budget counts the trial that would run next: stop when one more, as long as the longest so
        # far, would end after it (Optuna's own timeout only stops starting trials, and lets the last run over)
        if time.perf_counter() - started + max(r["seconds"] for r in records) > budget_s:
            if len(records) < trials:
                log(f"tuning: stopping after {len(records)} trials: another would end past "
                    f"model.tune_budget_s ({budget_s:.0f} s)")
            study.stop()

    study.optimize(objective, n_trials=trials, callbacks=[within_budget])
    best = records[int(np.argmax([r["value"] for r in records]))]
    result = SearchResult(params=with_overrides(base, best["params"]), base_score=records[0]["value"],
                          best_score=best["value"], trials=records, seconds=time.perf_counter() - started,
                          validation_pairs=len(validation))
    log(result.summary())
    return result


def train_shipped(train: pd.DataFrame, user_features: pd.DataFrame, catalogue: pd.DataFrame, model_settings,
                  split: Split, reuse: dict | None = None, log: Callable[[str], None] = print, on_epoch=None):
    """The shipped model: the settings' parameters, tuned on validation data (or ``reuse``: a recent search's
    choice, as flat overrides), fitted on all of ``train``. Returns ``(model, losses, params, search)``;
    ``search`` is None when nothing was searched."""
    base = base_params(model_settings)
    result = None
    if reuse is not None:
        params = with_overrides(base, reuse)
        log(f"tuning: reusing a recent search's choice {reuse}")
    elif (model_settings.tune and model_settings.tune_trials > 0
          and not too_small_to_search(train, split, model_settings, log)):
        result = search(train, user_features, catalogue, base, split, model_settings.tune_trials,
                        model_settings.tune_budget_s, seed=model_settings.seed, log=log,
                        max_pairs=model_settings.tune_max_pairs)
        params = result.params
    else:
        params = base
    model, losses = fit(train, user_features, catalogue, params, log=log, on_epoch=on_epoch)
    return model, losses, params, result
