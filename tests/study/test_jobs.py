"""Ray Jobs against a local head (slow): `ray start --head` in the test, `ray job submit
--working-dir <dir> -- <entrypoint>` for the study script and a smoke job, both SUCCEEDED.

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
import json
import os
import shlex
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

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))

# The study job, as `ray job submit --working-dir <JOB_WORKING_DIR> -- <JOB_ENTRYPOINT>`:
# studies/scale_pythia.py from an uploaded copy of the repository (Ray leaves out .git,
# .venv and what .gitignore names), really run on its micro preset with its fastest
# options: the tiny world, the `nano` base LLM, one method, the continual recipe (the default
# reproduction, Fig. 3b, is the LLaVA recipe), one seed, no Tune. It generates
# the world, pretrains the nano bases, runs alignment + the 4 continual tasks with
# evaluation after each, and writes the report ({out} is a temp dir of the test).
JOB_ENTRYPOINT = ("python studies/scale_pythia.py --preset micro --world-size tiny --scales nano "
                  "--methods naive --recipes continual --seeds 0 --no-tune --eval-samples 8 --quiet "
                  "--out {out}")
JOB_WORKING_DIR = ROOT
JOB_EXPECT = "report: "
# A self-contained smoke job beside it (written into a temp working dir): imports a module
# from its working dir and mllmcl_ray, runs Ray tasks on the job's cluster, prints a marker.
SMOKE_ENTRYPOINT = "python job_smoke.py"
JOB_MARKER = "MLLMCL_JOB_OK"
JOB_TIMEOUT_S = 480  # seconds the jobs may take together

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


def _smoke_dir(root: Path) -> Path:
    wd = root / "job"
    wd.mkdir()
    (wd / "job_smoke.py").write_text(SMOKE_SCRIPT)
    (wd / "job_helper.py").write_text('NAME = "from-the-working-dir"\n')
    return wd


WAIT_SCRIPT = """
import json, os, sys, time
from ray.job_submission import JobStatus, JobSubmissionClient
client = JobSubmissionClient(os.environ["RAY_API_SERVER_ADDRESS"])
ids, deadline, out = sys.argv[2:], time.time() + float(sys.argv[1]), {}
while ids and time.time() < deadline:
    for sid in list(ids):
        st = client.get_job_status(sid)
        if st.is_terminal():
            out[sid] = {"status": st.value, "logs": client.get_job_logs(sid)}
            ids.remove(sid)
    time.sleep(0.5)
for sid in ids:
    out[sid] = {"status": client.get_job_status(sid).value, "logs": client.get_job_logs(sid)}
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def jobs(ray_head, tmp_path_factory):
    """Submit the study job and the smoke job together (`ray job submit --no-wait`), wait for
    both through the Jobs SDK; {name: {"status", "logs"}}."""
    wanted = {"smoke": (_smoke_dir(tmp_path_factory.mktemp("smoke")), SMOKE_ENTRYPOINT)}
    study_out = tmp_path_factory.mktemp("study-out")
    if (ROOT / shlex.split(JOB_ENTRYPOINT)[1]).exists():
        wanted["study"] = (JOB_WORKING_DIR, JOB_ENTRYPOINT.format(out=study_out))
    sids = {}
    for name, (wd, entry) in wanted.items():
        sid = f"mllmcl-{name}-{uuid.uuid4().hex[:8]}"
        r = subprocess.run([RAY, "job", "submit", "--no-wait", "--submission-id", sid, "--working-dir",
                            str(wd), "--", *shlex.split(entry)], env=ray_head, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        sids[name] = sid
    r = subprocess.run([sys.executable, "-c", WAIT_SCRIPT, str(JOB_TIMEOUT_S), *sids.values()],
                       env=ray_head, capture_output=True, text=True, timeout=JOB_TIMEOUT_S + 60)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, (r.stdout + r.stderr)[-4000:]
    got = json.loads(line[-1][len("RESULT"):])
    out = {name: got[sid] for name, sid in sids.items()}
    if "study" in out:
        out["study"]["out"] = study_out
    return out


@pytest.mark.slow
def test_study_job_succeeds(jobs):
    if "study" not in jobs:
        pytest.skip(f"{shlex.split(JOB_ENTRYPOINT)[1]} not present")
    assert jobs["study"]["status"] == "SUCCEEDED", jobs["study"]["logs"][-4000:]
    assert JOB_EXPECT in jobs["study"]["logs"]
    out = Path(jobs["study"]["out"])
    report = out / "scale_pythia-report.html"
    assert report.exists() and report.stat().st_size > 100_000
    from mllmcl_ray.results import ResultStore

    df = ResultStore(out / "results").read()
    # NL suite for the base model (task 1) and after each of the 4 continual tasks
    assert sorted(df.loc[df.eval_task == "nl", "trained_task_index"].unique()) == [1, 2, 3, 4, 5]
    assert {"vqa", "ocr", "grounding"} <= set(df.eval_task)


@pytest.mark.slow
def test_smoke_job_runs_ray_tasks(jobs):
    assert jobs["smoke"]["status"] == "SUCCEEDED", jobs["smoke"]["logs"][-4000:]
    assert f"{JOB_MARKER} 14 from-the-working-dir" in jobs["smoke"]["logs"]


@pytest.mark.slow
def test_client_with_a_wrong_token_is_refused(ray_head):
    """Token auth is on: the Jobs API refuses a client whose token is not the head's."""
    env = dict(ray_head, RAY_AUTH_TOKEN="0" * 64)
    r = subprocess.run([RAY, "job", "list"], env=env, capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "Invalid authentication token" in out or "401" in out or "403" in out, out[-2000:]
