"""HTTP scenarios: uvicorn servers and the load generator, each in its own process, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from benchmarks.http_apps import ENV_BOOTSTRAP, ENV_DATABASE_URL, ENV_SECRET_KEY, ENV_TOPIC
from benchmarks.loadgen import LoadResult
from zapflow.processes import free_port, spawn, stop, tail, wait_for_port

HOST: Final = "127.0.0.1"
ROOT: Final = Path(__file__).resolve().parent.parent
CONCURRENCY: Final = 32
WARMUP_S: Final = 0.5
MAX_REQUESTS: Final = 200_000


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint under load."""

    key: str
    server: str
    path: str
    form: bool = False
    headers: tuple[str, ...] = ()


TARGETS: Final = (
    Target("form", "bare", "/form", form=True),
    Target("form_produce", "bare", "/form-produce", form=True),
    Target("get", "bare", "/ping"),
    Target("healthz", "zapflow", "/healthz"),
)


@dataclass(slots=True)
class Load:
    """The merged outcome of every round against one target."""

    seconds: float = 0.0
    errors: int = 0
    latencies_us: list[int] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return len(self.latencies_us) / self.seconds if self.seconds else float("nan")

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_us:
            return float("nan")
        ordered = sorted(self.latencies_us)
        index = min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))
        return ordered[index] / 1000

    def summary(self) -> str:
        text = f"p50 {self.percentile_ms(0.5):.1f} ms, p99 {self.percentile_ms(0.99):.1f} ms"
        return text + (f", **{self.errors} non-200 responses**" if self.errors else "")


@contextmanager
def _uvicorn(target: str, env: dict[str, str], log: Path, factory: bool) -> Iterator[int]:
    """Serve `module:attr` with uvicorn (1 process, no access log); yields its port."""
    port = free_port(HOST)
    argv = [sys.executable, "-m", "uvicorn", target, "--host", HOST, "--port", str(port)]
    argv += ["--no-access-log", "--log-level", "warning", *(["--factory"] if factory else [])]
    with log.open("ab") as out:
        process = spawn(argv, log=out, env={**os.environ, **env}, cwd=ROOT)
    try:
        if not wait_for_port(HOST, port, 30.0, process):
            raise RuntimeError(f"uvicorn {target} did not start:\n{tail(log)}")
        yield port
    finally:
        stop(process, 5.0)


def _load(port: int, target: Target, seconds: float) -> LoadResult:
    argv = [sys.executable, "-m", "benchmarks.loadgen", "--port", str(port), "--path", target.path,
            "--concurrency", str(CONCURRENCY), "--duration", f"{seconds:.2f}",
            "--warmup", str(WARMUP_S), "--max-requests", str(MAX_REQUESTS)]  # fmt: skip
    if target.form:
        argv += ["--method", "POST", "--form"]
    for line in target.headers:
        argv += ["--header", line]
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed on {target.path}:\n{done.stderr[-2000:]}")
    result: LoadResult = json.loads(done.stdout)
    return result


def run_http(
    bootstrap_servers: str,
    database_url: str,
    topic: str,
    work_dir: Path,
    seconds: float,
    rounds: int,
    webhook: Target,
    secret_key: str,
    extra: tuple[Target, ...] = (),
) -> dict[str, Load]:
    """Load every target for `seconds` in total, split into `rounds` interleaved rounds."""
    bare_env = {ENV_BOOTSTRAP: bootstrap_servers, ENV_TOPIC: topic,
                ENV_DATABASE_URL: database_url}  # fmt: skip
    ours_env = {ENV_BOOTSTRAP: bootstrap_servers, ENV_DATABASE_URL: database_url,
                ENV_SECRET_KEY: secret_key}  # fmt: skip
    targets = (*TARGETS, webhook, *extra)
    loads = {target.key: Load() for target in targets}
    with ExitStack() as stack:
        ports = {
            "bare": stack.enter_context(
                _uvicorn("benchmarks.http_apps:bare_app", bare_env, work_dir / "bare.log", False)
            ),
            "zapflow": stack.enter_context(
                _uvicorn("benchmarks.http_apps:zapflow_app", ours_env, work_dir / "api.log", True)
            ),
        }
        for _ in range(rounds):
            for target in targets:
                result = _load(ports[target.server], target, seconds / rounds)
                load = loads[target.key]
                load.seconds += result["elapsed_s"]
                load.errors += result["errors"]
                load.latencies_us.extend(result["latencies_us"])
    return loads
