"""Before starting: directories, Java, ports taken by someone else."""

from __future__ import annotations

import os
import shutil
import subprocess

from feedloop.settings import Settings
from infra.binaries import java_bin
from infra.errors import ServiceError
from infra.health import port_open, setting_value
from infra.kafka_broker import check_quorum_started_together
from infra.registry import BY_NAME
from infra.supervision import process_states


def prepare_dirs(settings: Settings) -> None:
    for sub in ("log", "run", "warehouse", "mlflow", "checkpoints"):
        (settings.var / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(settings.var / "run", 0o755)
    pg_socket_dir = settings.var / "run" / "pg"
    pg_socket_dir.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(pg_socket_dir, "postgres", "postgres")


def _port_owner_hint(port: int) -> str:
    try:
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=3).stdout.strip()
        return f" ({out.split('users:')[-1].strip()})" if "users:" in out else ""
    except Exception:
        return ""


def preflight(settings: Settings, names: list[str]) -> None:
    """Fail early, naming the problem: no Java, a port taken by someone else."""
    java_bin()
    state = process_states(settings)
    check_quorum_started_together(settings, names, state)
    for name in names:
        svc = BY_NAME[name]
        if state.get(name) == "RUNNING":
            continue
        ports = [(setting, setting_value(settings, setting)) for setting in svc.extra_ports]
        if svc.port_setting:
            ports.insert(0, (svc.port_setting, svc.port(settings)))
        for setting, port in ports:
            if port_open(settings.bind_host, port):
                section, field = setting.split(".")
                if field in type(getattr(settings, section)).model_fields:
                    choose = f"FEEDLOOP_{section.upper()}__{field.upper()}=<port>"
                else:  # derived from the section's port settings (Kafka brokers 2 and 3)
                    choose = f"FEEDLOOP_{section.upper()}__* (this port follows them)"
                raise ServiceError(
                    f"port {port} ({setting}) needed by {name} is already in use{_port_owner_hint(port)}; "
                    f"stop that process or choose another port with {choose}")

