"""One typed settings object for every part of feedloop.

Sources, later wins:
  1. defaults in this file (one machine, everything on 127.0.0.1);
  2. a profile: ``infra/profiles/<name>.yaml``, named by ``$FEEDLOOP_PROFILE``, else by
     ``profile:`` in the YAML file below, else by ``var/run/profile`` (written by
     ``feedloop up --profile NAME``, removed by ``feedloop down``); ``single`` (no file)
     when none names one. ``cluster`` runs every engine as a multi-member cluster
     (docs/cluster.md);
  3. a YAML file: ``$FEEDLOOP_CONFIG`` or ``feedloop.yaml`` in the repo root;
  4. environment variables ``FEEDLOOP_<SECTION>__<FIELD>``, e.g.
     ``FEEDLOOP_KAFKA__BOOTSTRAP=broker1:9092,broker2:9092``.

Secrets (passwords, API keys) come from the environment only; on one machine,
``feedloop up`` generates them once under ``var/secrets/`` (never in git).
A bad value raises :class:`SettingsError` naming the setting and its source.
"""

from __future__ import annotations

import os
import re
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "FEEDLOOP_"
PROFILES_DIR = REPO_ROOT / "infra" / "profiles"
SECRET_FIELDS = {
    ("redis", "password"),
    ("postgres", "password"),
    ("api", "api_key"),
    ("airflow", "admin_password"),
    ("airflow", "jwt_secret"),
    ("mlflow", "admin_password"),
    ("hive", "password"),
    ("hive", "analyst_password"),
    ("hive", "metastore_db_password"),
    ("dashboard", "admin_password"),
    ("spark", "connect_token"),
}


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it and its source."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"port must be in 1..65535, got {value}")
    return value


class KafkaSettings(_Section):
    # empty: every broker this stack runs, <bind_host>:<its port> (Settings fills it in), so a client
    # starting while one broker is down still finds the others
    bootstrap: str = ""
    controller_port: int = 9093
    port: int = 9092
    # Brokers on this machine, each a KRaft controller too (one quorum of `brokers` voters). Broker n (1-based)
    # listens on port + (n-1) * node_port_step and controller_port + (n-1) * node_port_step, so a port shift
    # moves every node. The cluster profile runs 3 (infra/profiles/cluster.yaml, docs/cluster.md).
    brokers: int = Field(1, ge=1, le=3)
    node_port_step: int = Field(10, ge=2)
    # 0: follow the brokers, min(3, brokers) replicas and min.insync.replicas 2 with 3 replicas, else 1
    # (acks=all then survives one broker down without losing an acknowledged write). Against brokers run
    # elsewhere (an explicit bootstrap), set replication_factor to what that cluster holds.
    replication_factor: int = Field(0, ge=0)
    min_insync_replicas: int = Field(0, ge=0)
    heap: str = "512m"
    events_topic: str = "feedback.events"
    dlq_topic: str = "feedback.events.dlq"
    served_topic: str = "feedback.served"
    partitions: int = 4  # of every topic at creation; Spark reads one task per partition
    request_timeout_ms: int = 5000
    # Log recovery after an unclean stop (kill -9) reads every partition's unflushed tail; with
    # __consumer_offsets at Kafka's 50 partitions it took 150-300 s on a busy machine (docs/chaos.md).
    recovery_threads: int = 2  # num.recovery.threads.per.data.dir: partitions recovered in parallel
    offsets_partitions: int = 4  # offsets.topic.num.partitions: read when the topic is created, i.e. on fresh storage

    _ports = field_validator("controller_port", "port")(_check_port)

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap_has_port(cls, value: str) -> str:
        for server in value.split(",") if value else []:
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {value!r}")
        return value

    @model_validator(mode="after")
    def _replicas_fit_the_brokers(self) -> "KafkaSettings":
        # with an explicit bootstrap the brokers may be elsewhere (a real cluster): only Kafka can check it then
        if self.replication_factor > self.brokers and not self.bootstrap:
            raise ValueError(f"replication_factor {self.replication_factor} exceeds brokers {self.brokers}")
        if self.min_insync_replicas > self.replicas:
            raise ValueError(f"min_insync_replicas {self.min_insync_replicas} exceeds the {self.replicas} replicas")
        return self

    @property
    def replicas(self) -> int:
        """Replication factor of every topic, internal ones included."""
        return self.replication_factor or min(3, self.brokers)

    @property
    def min_isr(self) -> int:
        """min.insync.replicas: acks=all waits for this many copies."""
        return self.min_insync_replicas or (2 if self.replicas >= 3 else 1)

    @property
    def nodes(self) -> list[int]:
        """Node ids of the brokers on this machine, 1..brokers."""
        return list(range(1, self.brokers + 1))

    def node_port(self, node: int) -> int:
        return self.port + (node - 1) * self.node_port_step

    def node_controller_port(self, node: int) -> int:
        return self.controller_port + (node - 1) * self.node_port_step

    # the registry's port settings of brokers 2 and 3 (infra.registry: `kafka.port_2`, ...)
    port_2 = property(lambda self: self.node_port(2))
    port_3 = property(lambda self: self.node_port(3))
    controller_port_2 = property(lambda self: self.node_controller_port(2))
    controller_port_3 = property(lambda self: self.node_controller_port(3))


class HiveSettings(_Section):
    metastore_uri: str = "thrift://127.0.0.1:9083"
    metastore_port: int = 9083
    metastore_heap: str = "384m"
    # Where the metastore keeps its tables (docs/cluster.md, "Hive metastore"). "postgres": the database
    # metastore_db_name on the stack's PostgreSQL (or at metastore_db_url), owned by metastore_db_user;
    # "derby": embedded Derby in var/metastore_db, which only the metastore's JVM can open. "auto": postgres,
    # except in a var dir whose metastore already lives in Derby (kept, with a message: nothing is migrated).
    metastore_db: Literal["auto", "derby", "postgres"] = "auto"
    # a JDBC URL of a PostgreSQL database run elsewhere (RDS, Cloud SQL); empty: <postgres.host>:<postgres.port>
    metastore_db_url: str = ""
    metastore_db_name: str = "metastore"
    metastore_db_user: str = "hive"
    metastore_db_password: str = ""
    hs2_host: str = "127.0.0.1"
    hs2_port: int = 10000
    thrift_heap: str = "1536m"  # it also runs the batch steps (spark.connect): their reads and ALS
    database: str = "feedloop"
    # HiveServer2 logins (CUSTOM auth, infra/hive-auth): the platform's own account and
    # one for analysts (beeline, PyHive); both passwords are secrets.
    user: str = "feedloop"
    password: str = ""
    analyst_user: str = "analyst"
    analyst_password: str = ""
    warehouse_dir: str = ""  # empty: var/warehouse
    # How long a Spark job's metastore client tries to connect before it fails (retries x delay, 2 min by
    # default): a metastore restart takes 1.5-7.5 min on a busy machine (docs/chaos.md), so the batch jobs
    # wait a bounded while and the DAG's retries cover the rest. The Thrift Server keeps Hive's fast
    # default (infra.commands), so an analyst's query fails within seconds, not minutes.
    metastore_connect_retries: int = Field(24, ge=1)
    metastore_connect_retry_delay_s: int = Field(5, ge=1)

    _ports = field_validator("metastore_port", "hs2_port")(_check_port)

    @field_validator("user", "analyst_user", "metastore_db_user", "metastore_db_name")
    @classmethod
    def _login_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
            raise ValueError(f"expected 1-64 letters, digits, '_', '.' or '-', got {value!r}")
        return value

    @field_validator("metastore_db_url")
    @classmethod
    def _postgres_jdbc_url(cls, value: str) -> str:
        if value and not value.startswith("jdbc:postgresql://"):
            raise ValueError(f"expected jdbc:postgresql://host:port/database (or empty), got {value!r}")
        return value

    @field_validator("metastore_uri")
    @classmethod
    def _thrift_uri(cls, value: str) -> str:
        if not value.startswith("thrift://"):
            raise ValueError(f"expected thrift://host:port, got {value!r}")
        return value


class SparkSettings(_Section):
    # empty: local[2] when workers is 0, else the standalone master feedloop runs, spark://<bind_host>:<master_port>
    # (Settings fills it in); set it for any other cluster (spark://..., yarn, k8s://...; docs/cluster.md)
    master: str = ""
    ui_port: int = 4040
    # Spark standalone under feedloop's supervision (the cluster profile): a master and this many workers,
    # each worker a process on this machine advertising worker_cores cores and worker_memory for executors.
    # Advertising more cores than the machine has is deliberate: every application (Thrift Server, stream-events,
    # the learner, a DAG step) is capped at app_cores, one executor of executor_cores per worker, so four of them
    # run at once instead of the first one taking every core and the others waiting (docs/cluster.md).
    workers: int = Field(0, ge=0, le=2)
    master_port: int = 7077
    master_ui_port: int = 8090
    worker_ui_port: int = 8091  # worker n's web UI listens on worker_ui_port + n - 1
    worker_cores: int = Field(6, ge=1)
    worker_memory: str = "6g"
    daemon_memory: str = "256m"  # heap of the master and worker JVMs (they only schedule; executors are apart)
    executor_cores: int = Field(1, ge=1)
    executor_memory: str = "1g"
    app_cores: int = Field(2, ge=1)  # spark.cores.max: the cores one application holds at most
    driver_memory: str = "1g"
    shuffle_partitions: int = 4
    streaming_trigger_s: int = 1  # events -> Hive and Redis aggregates micro-batch interval
    max_offsets_per_trigger: int = 250_000  # per micro-batch, so a backlog drains in bounded batches
    dedup_window: str = "24 hours"  # a repeated event_id within this long of the first is dropped
    aggregates_late_after_s: int = 600  # events older than the newest less this miss the trending windows
    file_max_records: int = 1_000_000  # size target of the sink's Parquet files (rows per file)
    extra_conf: dict[str, str] = Field(default_factory=dict)
    # Spark Connect in the Thrift Server's application (its spark.plugins): the DAG's batch steps are thin
    # clients of that long-running driver instead of each starting a JVM and a metastore client of its own
    # (docs/performance.md, "The daily DAG"). Off: each step runs its own driver on `master`, as spark-submit would.
    connect: bool = True
    connect_port: int = 15002
    # A non-TLS client sends its token only over a local channel, so the client always says "localhost";
    # a Connect server on another host needs TLS in front (connect_url: sc://host:port/;use_ssl=true).
    connect_url: str = ""
    connect_token: str = ""

    _ports = field_validator("ui_port", "master_port", "master_ui_port", "worker_ui_port", "connect_port")(_check_port)

    @field_validator("master")
    @classmethod
    def _known_master(cls, value: str) -> str:
        if value and not value.startswith(("local", "spark://", "yarn", "k8s://")):
            raise ValueError(f"expected local[*], spark://host:port, yarn or k8s://..., got {value!r}")
        return value


class RedisSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 6379
    username: str = ""  # an ACL user; empty: the default user (requirepass)
    password: str = ""
    db: int = 0
    socket_timeout_s: float = 0.25
    feed_ttl_s: int = 3600
    # host:port is one node of a Redis Cluster: clients discover the others (docs/cluster.md)
    cluster: bool = False

    _ports = field_validator("port")(_check_port)


class PostgresSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "feedloop"
    password: str = ""
    bin_dir: str = ""  # empty: found from pg_config or /usr/lib/postgresql/*/bin

    _ports = field_validator("port")(_check_port)


class MlflowSettings(_Section):
    port: int = 5000
    tracking_uri: str = ""  # empty: http://<bind_host>:<port>
    experiment: str = "feedloop"
    model_name: str = "feedloop-two-tower"
    # the server runs MLflow's basic-auth app; every feedloop client logs in as this user
    admin_user: str = "admin"
    admin_password: str = ""

    _ports = field_validator("port")(_check_port)


class AirflowSettings(_Section):
    port: int = 8080
    admin_user: str = "admin"
    admin_password: str = ""
    jwt_secret: str = ""
    parallelism: int = 4
    # Who runs the tasks. "LocalExecutor": processes of the scheduler (one machine). "CeleryExecutor": the
    # service airflow-worker (on this host, or the same command on others), fed through a queue in Redis
    # (redis.host/port/password, database celery_broker_db) with its results in Postgres's airflow DB
    # (docs/cluster.md, "Airflow"); the cluster profile picks it.
    executor: Literal["LocalExecutor", "CeleryExecutor"] = "LocalExecutor"
    worker_concurrency: int = Field(2, ge=1)  # tasks one Celery worker runs at once
    celery_broker_db: int = Field(1, ge=0)  # Celery's Redis database: never the online store's (redis.db)
    # a task that sent no heartbeat for this long (its worker or host died) is failed into a retry by the
    # scheduler; Airflow's default
    task_heartbeat_timeout_s: int = Field(300, ge=30)
    # where tasks (on Celery workers of other hosts too) and clients reach the api-server; empty: bind_host
    api_host: str = ""

    _ports = field_validator("port")(_check_port)


class ApiSettings(_Section):
    port: int = 8000
    api_key: str = ""
    workers: int = 1
    max_body_bytes: int = 1_000_000

    _ports = field_validator("port")(_check_port)


class SearchSettings(_Section):
    # Catalogue search (GET /v1/items). "embedded": each API worker's in-memory SQLite FTS5 index
    # (serving/search_index.py), nothing to run. "opensearch": an OpenSearch (or Elasticsearch 8)
    # cluster; publication indexes each catalogue version as <index_prefix>-<version>
    # (feature_store/search_engine.py) and the API queries the version it serves. With url empty
    # the stack runs a single-node OpenSearch of its own (service `opensearch`, state in
    # var/opensearch) on port; a url names a real cluster instead, and nothing is started.
    backend: Literal["embedded", "opensearch"] = "embedded"
    url: str = ""
    port: int = 9200
    transport_port: int = 9300  # the node's own transport (single node: nothing joins it)
    heap: str = "512m"
    index_prefix: str = "feedloop-catalogue"
    timeout_s: float = 0.5

    _ports = field_validator("port", "transport_port")(_check_port)

    @property
    def endpoint(self) -> str:
        """The cluster's base URL: ``url``, or the stack's own node."""
        return self.url.rstrip("/") if self.url else f"http://127.0.0.1:{self.port}"


class DashboardSettings(_Section):
    port: int = 8050
    # HTTP basic auth, like MLflow's UI: the page shows the stack's state and links to the other UIs
    admin_user: str = "admin"
    admin_password: str = ""
    refresh_s: float = 2.0  # how often the page asks for a new snapshot

    _ports = field_validator("port")(_check_port)


class ModelSettings(_Section):
    # The two-tower model and its training: every field of models.two_tower.TowerConfig, then the
    # training knobs. One path reads them (models.tuning.base_params): the DAG's train step,
    # bench.quality, bench.training, bench.closed_loop and the online learner. The defaults are the
    # configuration bench.quality measures; the train step's bounded search (below) starts from them
    # and keeps them unless another configuration scores better on a validation split. See docs/model.md.
    embedding_dim: int = 64
    hash_buckets: int = 200_000
    temperature: float = 0.05
    id_dropout: float = 0.1
    segment_part_dropout: float = 0.1
    history_length: int = 200
    history_dropout: float = 0.5
    history_pooling: Literal["mean", "sqrt"] = "mean"
    user_id_dropout: float = 1.0
    uniform_negatives: int = 1024
    hidden_units: int = 256
    hidden_layers: int = 1
    head_dropout: float = 0.3
    optimizer: Literal["adam", "adagrad"] = "adam"
    weight_decay: float = 0.0
    average_epochs: int = 10
    log_q_weight: float = 2.0
    full_softmax_max_items: int = 0  # exact softmax over catalogues up to this size (models.two_tower)
    seed: int = 7
    epochs: int = 24
    batch_size: int = 1024
    learning_rate: float = 0.002
    final_learning_rate: float | None = None  # None: constant; else linear decay to it over the epochs
    # Fewer epochs on big days: at most this many examples (epochs x training pairs, at least 2 epochs; the
    # averaged epochs shrink in proportion; 0: no cap). ML-100K's 24 epochs (~1.8M examples) fit under it,
    # so the benchmarked configuration is what ships there; a 1M-event day (~307k pairs) trains 6 epochs
    # of the 14 its search chose on 2026-12-06 (docs/model.md, docs/performance.md).
    train_max_examples: int = Field(2_000_000, ge=0)
    # Tuning on validation data (models.tuning): an Optuna search (TPE, the defaults above as its
    # first trial) on a validation split carved out of the training pairs, never the holdout.
    tune: bool = True
    tune_trials: int = 8  # at most this many configurations ...
    tune_budget_s: float = 600.0  # ... and no trial that would end after this many seconds (by the longest so far)
    # Trials on a day with more training pairs than this run on a seeded sample of its users with about this
    # many pairs (ML-100K's size, where the search space was set): a trial then costs what it costs there.
    tune_max_pairs: int = Field(100_000, ge=0)
    tune_every_days: int = 7  # search again when the last search is older (by ds) ...
    tune_catalogue_change: float = 2.0  # ... or the catalogue grew or shrank by this factor
    # No search (two-tower, ALS grid, EASE λ) on fewer validation pairs than this: the configured parameters.
    # On the demo's day (292 validation pairs, ~150 users) one NDCG@10 has a standard error of about 0.02,
    # as wide as the whole spread of its 8 trials (0.102-0.122), so a search there picks noise for 80 s.
    tune_min_validation_pairs: int = Field(1000, ge=0)
    validation_share: float = 0.2  # share of the training pairs held out for validation
    feed_size: int = 50
    # Per-category segment feeds (the candidates of ?category= on the feed endpoints): this many
    # items per segment and category, for at most this many categories (the largest); 0 turns them
    # off. Redis holds about segments x categories x size x 22 bytes per publication (docs/serving.md).
    category_feed_size: int = 50
    category_feeds_max: int = 50
    aging_keep_share: float = 0.2  # share of the previous feed's unseen items a refresh keeps
    exploration_slots: int = 2  # slots reserved for new items in every feed
    new_item_days: int = 7  # items created this recently are exploration candidates
    # the online learner (spark/stream_learner.py, models/online.py)
    # the online learner's learning rate: this share of `learning_rate` (the daily one, tuned with the towers'
    # size and optimizer), so that a bigger or slower-trained champion gets smaller online steps
    online_learning_rate_share: float = 1.0
    # fine-tune the embedding rows only (the towers' dense layers stay the champion's): gentler, but on the
    # demo champion 3 of 20 bursts then missed the feed (docs/model.md), so every variable learns by default
    online_embeddings_only: bool = False
    online_max_steps: int = 8  # steps per pass over an update's new pairs
    # the prequential judge (test-then-train, docs/model.md): the online state is reset to the champion when,
    # over the last `online_prequential_window` batches, it ranks the clicked items below the champion by more
    # than `online_prequential_margin` (mean percentile rank, 0..1) and by more than its noise
    online_prequential_window: int = Field(8, ge=3)  # batches
    online_prequential_margin: float = Field(0.02, ge=0.0)
    online_prequential_min_events: int = Field(30, ge=0)  # events the window must hold before it judges
    online_max_rollbacks: int = Field(3, ge=1)  # resets to one champion before learning stops (`feedloop status`)
    # secondary bound, catastrophes only: the share of its holdout recall@10 one update must keep
    online_holdout_floor: float = Field(0.5, ge=0.0, le=1.0)


class Settings(_Section):
    profile: str = "single"  # set by the loader from the profile in force (see the module's docstring)
    bind_host: str = "127.0.0.1"
    var_dir: str = ""  # empty: <repo>/var
    jar_cache: str = ""  # empty: ~/.cache/feedloop/jars
    # CPU priority (nice) of the batch and streaming services (infra.commands.BACKGROUND): under load the
    # kernel then runs the API, Redis and Kafka first. 0: everything at the same priority.
    batch_nice: int = Field(10, ge=0, le=19)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    hive: HiveSettings = Field(default_factory=HiveSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    airflow: AirflowSettings = Field(default_factory=AirflowSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)

    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)

    @model_validator(mode="after")
    def _derive_spark_master(self) -> Settings:
        if not self.spark.master:
            self.spark.master = self.standalone_master_url if self.spark.workers else "local[2]"
        return self

    @property
    def standalone_master_url(self) -> str:
        """The URL of the Spark standalone master feedloop runs (service spark-master)."""
        return f"spark://{self.bind_host}:{self.spark.master_port}"

    @model_validator(mode="after")
    def _kafka_bootstrap_names_every_broker(self) -> "Settings":
        if not self.kafka.bootstrap:
            self.kafka.bootstrap = ",".join(f"{self.bind_host}:{self.kafka.node_port(n)}" for n in self.kafka.nodes)
        return self

    # -- derived paths -------------------------------------------------
    @property
    def var(self) -> Path:
        return Path(self.var_dir) if self.var_dir else REPO_ROOT / "var"

    @property
    def log_dir(self) -> Path:
        return self.var / "log"

    @property
    def jars(self) -> Path:
        return Path(self.jar_cache) if self.jar_cache else Path.home() / ".cache" / "feedloop" / "jars"

    @property
    def hive_auth_jar(self) -> Path:
        """HiveServer2's password provider, built from infra/hive-auth by `make install`."""
        return self.jars / "hive-auth" / "feedloop-hive-auth.jar"

    @property
    def warehouse(self) -> Path:
        return Path(self.hive.warehouse_dir) if self.hive.warehouse_dir else self.var / "warehouse"

    @property
    def mlflow_uri(self) -> str:
        """The tracking and registry URI; asking for it also gives this process MLflow's login.

        Every MLflow client of feedloop (DAG tasks, the online learner, benches, commands,
        tests) gets the URI here, and MLflow's client reads its basic-auth credentials from
        the environment at each request, so setting them here reaches every client.
        """
        os.environ.update(mlflow_client_env(self))
        return self.mlflow.tracking_uri or f"http://{self.bind_host}:{self.mlflow.port}"

    @property
    def postgres_dsn(self) -> str:
        pg = self.postgres
        return f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}"


def mlflow_client_env(settings: Settings) -> dict[str, str]:
    """MLflow's client login (MLFLOW_TRACKING_USERNAME/PASSWORD) from the settings.

    Empty when the password is not set, or when this process was given a login of its
    own (MLFLOW_TRACKING_USERNAME in the environment), which then stays as it is.
    """
    if not settings.mlflow.admin_password or os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return {}
    return {"MLFLOW_TRACKING_USERNAME": settings.mlflow.admin_user,
            "MLFLOW_TRACKING_PASSWORD": settings.mlflow.admin_password}


def _secrets_dir() -> Path:
    return Path(os.environ.get(ENV_PREFIX + "VAR_DIR") or REPO_ROOT / "var") / "secrets"


def generate_local_secrets() -> Path:
    """Create var/secrets/<section>__<field> once, for a one-machine stack."""
    directory = _secrets_dir()
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for section, field in sorted(SECRET_FIELDS):
        path = directory / f"{section}__{field}"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(18))
            os.chmod(path, 0o600)
    return directory


def _read_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise SettingsError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
    return loaded


def _merge(data: dict[str, Any], source: dict[tuple[str, ...], str], loaded: dict[str, Any], where: str) -> None:
    """Layer one YAML mapping (a profile or feedloop.yaml) over ``data``; secrets are refused."""
    for key, value in loaded.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                if (key, sub) in SECRET_FIELDS:
                    raise SettingsError(f"{key}.{sub} is a secret: set {ENV_PREFIX}{key.upper()}__{sub.upper()} in the environment, not {where}")
                data.setdefault(key, {})[sub] = subvalue
                source[(key, sub)] = where
        else:
            data[key] = value
            source[(key,)] = where


def profile_file() -> Path:
    """``var/run/profile``: the profile ``feedloop up --profile`` started the stack with."""
    return Path(os.environ.get(ENV_PREFIX + "VAR_DIR") or REPO_ROOT / "var") / "run" / "profile"


def active_profile(from_config: Any = None) -> str:
    """The profile in force: ``$FEEDLOOP_PROFILE``, else the YAML file's, else the running stack's."""
    named = os.environ.get(ENV_PREFIX + "PROFILE") or from_config
    if not named and profile_file().exists():
        named = profile_file().read_text().strip()
    return str(named or "single")


def _layer_sources() -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Merge file, generated secrets and env into one dict; remember each value's source.

    Hand-written, not pydantic-settings (2.16, in the lock), for what it could not do when tried
    (2026-11-30): its error for ``FEEDLOOP_REDIS__PORT=abc`` reads "redis.port Input should be a
    valid integer" without saying which of env, YAML file or secret file gave the value, where
    ours names it (tests/unit/test_settings.py); a ``BaseSettings`` model reads the environment
    and secrets at every construction, so the tests' ``Settings(redis={...})`` for a private
    server would pick up the machine's generated Redis password; and it has no rule refusing a
    secret in the YAML file. These 40 lines do all three.
    """
    data: dict[str, Any] = {}
    source: dict[tuple[str, ...], str] = {}

    config = Path(os.environ.get(ENV_PREFIX + "CONFIG") or REPO_ROOT / "feedloop.yaml")
    loaded = _read_yaml(config) if config.exists() else {}
    profile = active_profile(loaded.get("profile"))
    if profile != "single":
        path = PROFILES_DIR / f"{profile}.yaml"
        if not path.exists():
            known = ", ".join(["single"] + sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
            raise SettingsError(f"unknown profile {profile!r} (known: {known})")
        _merge(data, source, _read_yaml(path), str(path))
    _merge(data, source, loaded, str(config))
    data["profile"] = profile

    secret_dir = _secrets_dir()
    for section, field in SECRET_FIELDS:
        path = secret_dir / f"{section}__{field}"
        if path.exists():
            data.setdefault(section, {})[field] = path.read_text().strip()
            source[(section, field)] = str(path)

    for name, value in os.environ.items():
        if not name.startswith(ENV_PREFIX) or name in (ENV_PREFIX + "CONFIG", ENV_PREFIX + "PROFILE"):
            continue
        parts = tuple(p.lower() for p in name[len(ENV_PREFIX):].split("__"))
        if len(parts) == 1:
            data[parts[0]] = value
        elif len(parts) == 2:
            section = data.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise SettingsError(f"{name}: {parts[0]} is not a section")
            section[parts[1]] = yaml.safe_load(value) if parts[1] == "extra_conf" else value
        else:
            raise SettingsError(f"{name}: expected {ENV_PREFIX}<SECTION>__<FIELD>")
        source[parts] = f"env {name}"
    return data, source


def load_settings() -> Settings:
    """Build and validate the settings; raise SettingsError naming what is wrong."""
    data, source = _layer_sources()
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            where = source.get(loc, "default")
            if err["type"] == "extra_forbidden":
                lines.append(f"unknown setting {'.'.join(loc)} (from {where})")
            else:
                lines.append(f"setting {'.'.join(loc)} = {err.get('input')!r} (from {where}): {err['msg']}")
        raise SettingsError("invalid feedloop settings:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once."""
    return load_settings()
