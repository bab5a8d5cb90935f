"""Thread counts follow the container's CPU limit (cgroup quota), not the host's core count."""

import os

import pytest

from exportable import runtime


def _affinity():
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize("cpu_max,expected", [
    ("max 100000\n", None),         # unlimited: the affinity mask decides
    ("100000 100000\n", 1),         # --cpus 1
    ("150000 100000\n", 1),         # --cpus 1.5 rounds down
    ("50000 100000\n", 1),          # --cpus 0.5: still one thread
])
def test_cgroup_v2_quota(tmp_path, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert runtime.available_cpus(tmp_path) == (expected if expected is not None else _affinity())


def test_cgroup_v2_quota_above_the_affinity_mask_keeps_the_mask(tmp_path):
    (tmp_path / "cpu.max").write_text(f"{(_affinity() + 8) * 100000} 100000\n")
    assert runtime.available_cpus(tmp_path) == _affinity()


@pytest.mark.parametrize("quota,expected", [("-1", None), ("100000", 1)])
def test_cgroup_v1_quota(tmp_path, quota, expected):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtime.available_cpus(tmp_path) == (expected if expected is not None else _affinity())


def test_no_cgroup_files_means_the_affinity_mask(tmp_path):
    assert runtime.available_cpus(tmp_path) == _affinity()


def test_sessions_use_the_container_limit_not_the_host_count(monkeypatch):
    monkeypatch.setattr(runtime, "available_cpus", lambda *a, **k: 1)
    so = runtime.session_options(set())
    assert so.intra_op_num_threads == 1
    assert runtime.session_options(set(), threads=3).intra_op_num_threads == 3


def test_sessions_flush_denormals():
    """Softmax tails over long padded rows are denormal floats, which x86 multiplies at a fraction
    of speed (measured 17 % of a mixed-length batch, docs/performance.md); sessions flush them."""
    so = runtime.session_options(set())
    assert so.get_session_config_entry("session.set_denormal_as_zero") == "1"
