"""supervisord: its config (one program per service), its XML-RPC client, starting it."""

from __future__ import annotations

import subprocess
import time
import xmlrpc.client
from pathlib import Path

from feedloop.settings import REPO_ROOT, Settings
from infra.binaries import VENV_BIN
from infra.errors import ServiceError
from infra.registry import active


def supervisor_conf(settings: Settings) -> Path:
    run = settings.var / "run"
    conf = [
        "[unix_http_server]", f"file={run / 'supervisor.sock'}", "chmod=0700", "",
        "[supervisord]", f"logfile={settings.log_dir / 'supervisord.log'}", f"pidfile={run / 'supervisord.pid'}",
        "logfile_maxbytes=10MB", "logfile_backups=2", "loglevel=info", f"directory={REPO_ROOT}", "nodaemon=false",
        "minfds=4096", "",
        "[rpcinterface:supervisor]", "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{run / 'supervisor.sock'}", "",
    ]
    for svc in active(settings):
        conf += [
            f"[program:{svc.name}]",
            f"command={VENV_BIN / 'feedloop'} supervise {svc.name}",
            f"directory={REPO_ROOT}",
            "autostart=false", "autorestart=true", "startsecs=3", "startretries=5",
            "stopasgroup=true", "killasgroup=true", "stopwaitsecs=30", "stopsignal=TERM",
            f"stdout_logfile={svc.log(settings)}", "redirect_stderr=true",
            "stdout_logfile_maxbytes=20MB", "stdout_logfile_backups=2", "",
        ]
    path = settings.var / "supervisord.conf"
    path.write_text("\n".join(conf))
    return path


def supervisor(settings: Settings):
    from supervisor.xmlrpc import SupervisorTransport

    sock = settings.var / "run" / "supervisor.sock"
    transport = SupervisorTransport(None, None, f"unix://{sock}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def supervisor_running(settings: Settings) -> bool:
    try:
        return supervisor(settings).getState()["statename"] == "RUNNING"
    except Exception:
        return False


def start_supervisord(settings: Settings) -> None:
    if supervisor_running(settings):
        supervisor(settings).reloadConfig()
        return
    conf = supervisor_conf(settings)
    subprocess.run([str(VENV_BIN / "supervisord"), "-c", str(conf)], check=True)
    deadline = time.time() + 15
    while not supervisor_running(settings):
        if time.time() > deadline:
            raise ServiceError(f"supervisord did not start; read {settings.log_dir / 'supervisord.log'}")
        time.sleep(0.2)


def process_states(settings: Settings) -> dict[str, str]:
    if not supervisor_running(settings):
        return {}
    return {p["name"]: p["statename"] for p in supervisor(settings).getAllProcessInfo()}

