"""Shared fixtures. `ray_local`: one local Ray (2 CPUs, no dashboard) per test session;
`one_torch_thread`: one torch thread for a module of tiny models."""
import os

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest single-threaded (and steadiest on a shared 2-core box); a
    module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """Start Ray once for every Ray test (each start costs seconds); workers inherit the
    environment set here (HF_HOME in a temp dir)."""
    import ray

    tmp = tmp_path_factory.mktemp("ray-session")
    os.environ.setdefault("HF_HOME", str(tmp / "hf"))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Not TUNE_RESULT_DIR / RAY_AIR_LOCAL_CACHE_DIR: Ray 2.60's Tuner.fit raises
    # DeprecationWarning when either is set. Tests pass storage_path explicitly instead.
    for var in ("TUNE_RESULT_DIR", "RAY_AIR_LOCAL_CACHE_DIR"):
        os.environ.pop(var, None)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA device: skipped where there is none."""
    gpu = [it for it in items if "gpu" in it.keywords]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (pytest marker `gpu`)")
    for it in gpu:
        it.add_marker(skip)
