"""`feedloop up`, `down` and `status`: the services in dependency waves, with health checks."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from feedloop.settings import Settings, SettingsError, generate_local_secrets, get_settings, profile_file
from infra.errors import ServiceError
from infra.health import kafka_ok, postgres_ok
from infra.hive import apply_ddl, metastore_notice
from infra.kafka_broker import create_topics, format_storage
from infra.postgres_db import create_databases, init_cluster
from infra.preflight import preflight, prepare_dirs
from infra.registry import BY_NAME, Service, active
from infra.supervision import process_states, start_supervisord, supervisor, supervisor_running


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log yet)"


def _times_file(settings: Settings) -> Path:
    return settings.var / "run" / "up-times.json"


def last_times(settings: Settings) -> dict[str, float]:
    """Seconds each service took to become healthy the last time `up` started it (the ETA's basis)."""
    try:
        return {k: float(v) for k, v in json.loads(_times_file(settings).read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def wave_eta(times: dict[str, float], waves: list[list[Service]]) -> float | None:
    """Expected seconds for these waves (each as long as its slowest member last time); None if one is new."""
    if any(s.name not in times for wave in waves for s in wave):
        return None
    return sum(max((times[s.name] for s in wave), default=0.0) for wave in waves)


def _wait_healthy(settings: Settings, services: list[Service], times: dict[str, float] | None = None) -> None:
    pending = {s.name: s for s in services}
    started = time.time()
    while pending:
        for name, svc in list(pending.items()):
            if svc.health(settings):
                print(f"  {name:<22} up   ({time.time() - started:5.1f}s)", flush=True)
                del pending[name]
                if times is not None:
                    times[name] = round(time.time() - started, 1)
                continue
            info = supervisor(settings).getProcessInfo(name)
            if info["statename"] in ("FATAL", "EXITED") or time.time() - started > svc.start_timeout_s:
                raise ServiceError(
                    f"{name} did not come up (state {info['statename']} after {time.time() - started:.0f}s); "
                    f"read {svc.log(settings)}\n--- last lines ---\n{_tail(svc.log(settings))}")
        time.sleep(0.5)


def up(names: list[str] | None = None, settings: Settings | None = None,
       after_wave: Callable[[int, Settings], None] | None = None) -> Settings:
    """Start the named services (default all) and their waves' prerequisites; return settings.
    ``after_wave(wave, settings)`` runs once each wave is healthy (the warm demo sends its burst after
    wave 2, while the streaming sink and Airflow start)."""
    generate_local_secrets()
    get_settings.cache_clear()
    settings = settings or get_settings()
    services = active(settings)
    wanted = list(names or [s.name for s in services if not s.optional])
    unknown = [n for n in wanted if n not in {s.name for s in services}]
    if unknown:
        hint = f" (profile {settings.profile}: {', '.join(s.name for s in services)})"
        raise ServiceError(f"unknown service(s) {unknown}; known: {', '.join(BY_NAME)}{hint}")
    wanted += [need for name in wanted for need in BY_NAME[name].needs(settings) if need not in wanted]
    if "metastore" in wanted and (notice := metastore_notice(settings)):
        print(notice, flush=True)
    prepare_dirs(settings)
    preflight(settings, wanted)
    init_cluster(settings)
    format_storage(settings)
    start_supervisord(settings)
    times, running = last_times(settings), process_states(settings)
    numbers = sorted({s.wave for s in services})
    waves = [[s for s in services if s.wave == w and s.name in wanted] for w in numbers]
    starting = [[s for s in batch if running.get(s.name) != "RUNNING"] for batch in waves]
    for n, (wave, batch) in enumerate(zip(numbers, waves)):
        if starting[n]:
            eta = wave_eta(times, starting[n:])
            print(f"  wave {wave}/{numbers[-1]}: starting {', '.join(s.name for s in starting[n])}"
                  + (f"; ETA {eta:.0f}s for the rest (the last start's times)" if eta is not None else ""), flush=True)
        if wave == 2:
            _after_wave1(settings)
        states = process_states(settings)
        if wave == 3 and any(s.name.startswith("airflow-") and states.get(s.name) != "RUNNING" for s in batch):
            from infra.airflow_env import airflow_init

            print("  migrating the Airflow database", flush=True)
            airflow_init(settings)
        _start_wave(settings, batch, states, times)
        _times_file(settings).write_text(json.dumps(times, indent=1, sort_keys=True))
        if wave == 2 and "thriftserver" in wanted:
            apply_ddl(settings)
        if after_wave is not None:
            after_wave(wave, settings)
    return settings


def _start_wave(settings: Settings, batch: list[Service], states: dict[str, str], times: dict[str, float]) -> None:
    """Start a wave's services and wait until they are healthy; one that needs another of the wave (the
    metastore on the stack's Postgres) starts once that one is healthy and its databases exist."""
    names = {s.name for s in batch}
    later = [s for s in batch if names & set(s.needs(settings))]
    needed = [s for s in batch if any(s.name in svc.needs(settings) for svc in later)]
    _start(settings, [s for s in batch if s not in later], states)
    if later:
        _wait_healthy(settings, needed, times)
        if "postgres" in {s.name for s in needed}:
            create_databases(settings)
        _start(settings, later, states)
    _wait_healthy(settings, [s for s in batch if s not in needed], times)


def start_in_background(names: list[str], settings: Settings) -> float | None:
    """Start the named services (their prerequisites already up) without waiting for their health; the
    seconds their last start took to become healthy, None when unknown. `feedloop status` shows them."""
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ServiceError(f"unknown service(s) {unknown}; known: {', '.join(BY_NAME)}")
    _start(settings, [BY_NAME[n] for n in names], process_states(settings))
    return wave_eta(last_times(settings), [[BY_NAME[n] for n in names]])


def _start(settings: Settings, services: list[Service], states: dict[str, str]) -> None:
    rpc = supervisor(settings)
    for svc in services:
        if states.get(svc.name) != "RUNNING":
            rpc.startProcess(svc.name, False)


def _after_wave1(settings: Settings) -> None:
    """Databases and topics the later waves need, wherever Postgres and Kafka run."""
    if postgres_ok(settings):
        create_databases(settings)
    if kafka_ok(settings):
        create_topics(settings)


def cmd_up(args) -> int:
    started = time.time()
    try:
        if getattr(args, "profile", None):
            use_profile(args.profile)
        settings = up(args.services or None)
    except (ServiceError, SettingsError) as exc:
        print(f"feedloop up: {exc}", file=sys.stderr)
        return 1
    count = len(args.services or [s for s in active(settings) if not s.optional])
    print(f"feedloop up: {count} services healthy in {time.time() - started:.0f}s (profile {settings.profile}); "
          f"logs in {settings.log_dir}")
    return 0


def use_profile(name: str) -> None:
    """Make ``name`` the profile of this process, its services and later commands (``var/run/profile``)."""
    os.environ["FEEDLOOP_PROFILE"] = name
    get_settings.cache_clear()
    settings = get_settings()  # raises SettingsError for an unknown profile
    running = active_profile_of_stack()
    if supervisor_running(settings) and running != name:
        raise ServiceError(f"the stack is running with profile {running}: `feedloop down` first")
    profile_file().parent.mkdir(parents=True, exist_ok=True)
    profile_file().write_text(name + "\n")


def active_profile_of_stack() -> str:
    return profile_file().read_text().strip() if profile_file().exists() else "single"


def down(settings: Settings | None = None) -> None:
    """Stop every supervised process and supervisord itself; wait until they are gone."""
    settings = settings or get_settings()
    if not supervisor_running(settings):
        return
    pidfile = settings.var / "run" / "supervisord.pid"
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    rpc = supervisor(settings)
    try:
        rpc.stopAllProcesses(True)
    except Exception:
        pass
    try:
        rpc.shutdown()
    except Exception:
        pass
    deadline = time.time() + 60
    while pid and time.time() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.2)
    profile_file().unlink(missing_ok=True)


def cmd_down(args) -> int:
    settings = get_settings()
    was_running = supervisor_running(settings)
    down(settings)
    print("feedloop down: every feedloop process stopped" if was_running else "feedloop down: nothing was running")
    return 0


def status_rows(settings: Settings) -> list[dict]:
    states = process_states(settings)
    rows = []
    for svc in active(settings):
        if svc.optional and states.get(svc.name, "STOPPED") == "STOPPED":
            continue  # not asked for: not part of the stack's health
        port = svc.port(settings)
        healthy = svc.health(settings) if states.get(svc.name) == "RUNNING" else False
        rows.append({"service": svc.name, "state": states.get(svc.name, "STOPPED"), "healthy": healthy,
                     "address": f"{settings.bind_host}:{port}" if port else "-", "log": str(svc.log(settings))})
    return rows


def cmd_status(args) -> int:
    settings = get_settings()
    if not supervisor_running(settings):
        print("feedloop status: not running (start with `make up`)")
        return 3
    rows = status_rows(settings)
    print(f"{'service':<22} {'state':<9} {'health':<7} {'address':<18} log")
    for r in rows:
        print(f"{r['service']:<22} {r['state']:<9} {'ok' if r['healthy'] else 'DOWN':<7} {r['address']:<18} {r['log']}")
    extra = stream_status(settings)
    if extra:
        print(extra)
    return 0 if all(r["healthy"] for r in rows) else 1


def stream_status(settings: Settings) -> str:
    from feedloop.progress import events_progress, learner_progress

    return "\n".join(line for line in (events_progress(settings), learner_progress(settings)) if line)

