"""A stack beside the dev stack moves every port (bench.stacks); bench.cluster's side-by-side summary."""

from __future__ import annotations

import pydantic

from bench.cluster import summary
from bench.stacks import BASE_PORTS, shifted_env
from feedloop.settings import Settings


def port_settings() -> dict[str, int]:
    """Every ``*port`` setting of every section, at its default, as FEEDLOOP_<SECTION>__<FIELD> names it."""
    found = {}
    for section, field in Settings.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel):
            for name, sub in field.annotation.model_fields.items():
                if name.endswith("port"):
                    found[f"{section}__{name}".upper()] = sub.default
    return found


def test_a_shifted_stack_moves_every_port_setting():
    assert BASE_PORTS == port_settings()  # a new port setting left out would collide with the dev stack's
    env = shifted_env("/tmp/x", 14000)
    assert env["FEEDLOOP_KAFKA__PORT"] == "23092" and env["FEEDLOOP_HIVE__METASTORE_URI"].endswith(":23083")
    assert "FEEDLOOP_KAFKA__BOOTSTRAP" not in env  # derived from the shifted brokers of the profile


def test_the_cluster_bench_puts_each_figure_beside_its_single_node_baseline():
    single = {"up_s": 100.0, "drain": {"hive_per_s": 8000, "stack_cpu_ms_per_event": 0.2}, "dag": {"seconds": 200.0},
              "memory": {"_all_peak_mb": 9000}}
    cluster = {"up_s": 150.0, "drain": {"hive_per_s": 6000, "stack_cpu_ms_per_event": 0.3}, "dag": {"seconds": 300.0},
               "memory": {"_all_peak_mb": 13500}}
    out = summary(single, cluster)
    assert out["drain_hive_events_per_s"] == {"single": 8000, "cluster": 6000, "cluster_vs_single": 0.75}
    assert out["dag_s"]["cluster_vs_single"] == 1.5 and out["memory_all_peak_mb"]["cluster_vs_single"] == 1.5
    assert summary(single, {"error": 1})["dag_s"] == {"single": 200.0, "cluster": None, "cluster_vs_single": None}
