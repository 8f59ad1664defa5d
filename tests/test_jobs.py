"""Ray Jobs against a local head (slow): `ray start --head` in the test, `ray job submit
--working-dir <dir> -- <JOB_ENTRYPOINT>`, the job SUCCEEDED.

The head runs beside the test session's own `ray.init` cluster (the `ray_local` fixture)
without touching it: its own temp dir, its own ports, and its own token (token auth, as
Ray 2.60 wants: RAY_AUTH_MODE=token + RAY_AUTH_TOKEN for the head and the client, so
nothing is read from or written to ~/.ray). It is started with `--block` in a new process
session and stopped by killing that process group (SIGKILL, what `ray stop --force`
sends) plus any process still naming its temp dir. `ray stop` itself is not used: it
stops every Ray process on the machine, the test session's cluster included.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))

# What the job test submits, as `ray job submit --working-dir <JOB_WORKING_DIR> -- <JOB_ENTRYPOINT>`:
# the self-contained smoke script below (written into a temp working dir; it imports a
# sibling module from the working dir and mllmcl_ray, runs Ray tasks on the cluster and
# prints JOB_MARKER). With JOB_WORKING_DIR = ROOT it would submit from the repository root,
# e.g. JOB_ENTRYPOINT = "python studies/scale_pythia.py --preset micro ...".
JOB_ENTRYPOINT = "python job_smoke.py"
JOB_WORKING_DIR: Path | None = None  # None: a temp dir with job_smoke.py + job_helper.py
JOB_MARKER = "MLLMCL_JOB_OK"
JOB_TIMEOUT_S = 240

SMOKE_SCRIPT = f'''
import ray

import job_helper            # from the uploaded working dir
import mllmcl_ray.config     # the package, importable in the job

ray.init()                   # the job's cluster (RAY_ADDRESS is set by Ray Jobs)


@ray.remote
def square(x):
    return x * x


total = sum(ray.get([square.remote(i) for i in range(4)]))
cfg = mllmcl_ray.config.RunConfig(name=job_helper.NAME)
print("{JOB_MARKER}", total, cfg.name, flush=True)
'''


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _pids_naming(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            pids.append(int(d.name))
    return pids


@pytest.fixture(scope="module")
def ray_head():
    """A separate local Ray head (2 CPUs, dashboard on 127.0.0.1); yields the client env."""
    tmp = tempfile.mkdtemp(prefix="rjob", dir="/tmp")  # short: Ray's socket paths have a length limit
    ports = _free_ports(9)
    (gcs, dash, client, agent_http, agent_grpc, rt_env, metrics, node_mgr, obj_mgr) = ports
    env = dict(os.environ,
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex + uuid.uuid4().hex,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               RAY_USAGE_STATS_ENABLED="0", HF_HOME=os.path.join(tmp, "hf"))
    env.pop("RAY_ADDRESS", None)
    cmd = [RAY, "start", "--head", "--block", "--num-cpus=2", "--dashboard-host=127.0.0.1",
           f"--port={gcs}", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={rt_env}", f"--metrics-export-port={metrics}",
           f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
           f"--temp-dir={tmp}", "--disable-usage-stats", "--include-log-monitor=false"]
    log = open(os.path.join(tmp, "head.log"), "w")
    head = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)

    def stop():
        with contextlib.suppress(ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            os.killpg(head.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            head.wait(10)
        for _ in range(20):  # anything of this head that left the process group
            left = _pids_naming(tmp)
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.25)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)

    try:
        url = f"http://127.0.0.1:{dash}/api/version"
        deadline = time.time() + 120
        while True:
            if head.poll() is not None:
                raise RuntimeError(f"ray start exited {head.returncode}:\n{Path(tmp, 'head.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except urllib.error.HTTPError:  # 401 without a token: the dashboard is up
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"dashboard not up after 120 s:\n{Path(tmp, 'head.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield dict(env, RAY_API_SERVER_ADDRESS=f"http://127.0.0.1:{dash}")
    finally:
        stop()


def _working_dir(tmp_path: Path) -> Path:
    if JOB_WORKING_DIR is not None:
        return JOB_WORKING_DIR
    wd = tmp_path / "job"
    wd.mkdir()
    (wd / "job_smoke.py").write_text(SMOKE_SCRIPT)
    (wd / "job_helper.py").write_text('NAME = "from-the-working-dir"\n')
    return wd


@pytest.mark.slow
@pytest.mark.parametrize("entrypoint", [JOB_ENTRYPOINT])
def test_job_submit_succeeds(ray_head, tmp_path, entrypoint):
    wd = _working_dir(tmp_path)
    sid = f"mllmcl-test-{uuid.uuid4().hex[:8]}"
    r = subprocess.run([RAY, "job", "submit", "--submission-id", sid, "--working-dir", str(wd), "--",
                        *entrypoint.split()], env=ray_head, capture_output=True, text=True,
                       timeout=JOB_TIMEOUT_S)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    status = subprocess.run([RAY, "job", "status", sid], env=ray_head, capture_output=True, text=True,
                            timeout=60)
    assert "SUCCEEDED" in status.stdout + status.stderr, (status.stdout + status.stderr)[-2000:]
    if JOB_WORKING_DIR is None:
        assert f"{JOB_MARKER} 14 from-the-working-dir" in out, out[-4000:]


@pytest.mark.slow
def test_client_without_the_token_is_refused(ray_head):
    env = {k: v for k, v in ray_head.items() if k not in ("RAY_AUTH_TOKEN",)}
    env["HOME"] = tempfile.mkdtemp(prefix="rjhome")  # no ~/.ray/auth_token to fall back on
    try:
        r = subprocess.run([RAY, "job", "list"], env=env, capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(env["HOME"], ignore_errors=True)
    assert r.returncode != 0
