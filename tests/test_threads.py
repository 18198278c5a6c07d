"""madrec.threads: torch's CPU threads from explicit settings, cgroup quota and affinity."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from madrec import cli, threads
from madrec.errors import MadrecError

CPUS = threads.affinity_cpus()


def fake_cgroup(tmp_path: Path, proc: str, files: dict[str, str]) -> dict:
    """A /sys/fs/cgroup tree and a /proc/self/cgroup file under tmp_path."""
    root = tmp_path / "cg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "proc").write_text(proc)
    return {"cgroup_root": root, "proc_cgroup": tmp_path / "proc", "environ": {}}


def test_cgroup_v2_quota(tmp_path):
    kw = fake_cgroup(
        tmp_path,
        "0::/kubepods/pod1/c1\n",
        {
            "kubepods/cpu.max": "max 100000\n",
            "kubepods/pod1/cpu.max": "150000 100000\n",  # 1.5 CPUs
            "kubepods/pod1/c1/cpu.max": "max 100000\n",
        },
    )
    assert threads.cgroup_cpu_limit(kw["cgroup_root"], kw["proc_cgroup"]) == pytest.approx(1.5)
    choice = threads.choose(**kw)
    assert choice.threads == min(CPUS, 2) and ("quota" in choice.source or CPUS <= 2)


def test_cgroup_v2_no_limit_and_container_root(tmp_path):
    kw = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert threads.cgroup_cpu_limit(kw["cgroup_root"], kw["proc_cgroup"]) is None
    assert threads.choose(**kw).threads == CPUS
    kw = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": "50000 100000\n"})  # a container: its own cgroup at /
    assert threads.cgroup_cpu_limit(kw["cgroup_root"], kw["proc_cgroup"]) == pytest.approx(0.5)
    # with a single allowed CPU (e.g. under taskset) the affinity already says 1
    source = "cgroup CPU quota: 0.5 CPUs" if CPUS > 1 else "CPU affinity: 1"
    assert threads.choose(**kw) == threads.ThreadChoice(1, source)


def test_cgroup_v1_quota(tmp_path):
    kw = fake_cgroup(
        tmp_path,
        "5:cpuacct,cpu:/docker/abc\n3:memory:/docker/abc\n0::/\n",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    # the controller list is "cpuacct,cpu" in /proc but the mount is cpu,cpuacct: found either way
    assert threads.cgroup_cpu_limit(kw["cgroup_root"], kw["proc_cgroup"]) == pytest.approx(1.0)
    assert threads.choose(**kw).threads == 1
    kw = fake_cgroup(tmp_path, "4:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_cpu_limit(kw["cgroup_root"], kw["proc_cgroup"]) is None


def test_v1_container_sees_its_own_cgroup_at_the_mount_root(tmp_path):
    # no cgroup namespace: /proc shows the host path, the mount shows only the container's cgroup
    kw = fake_cgroup(
        tmp_path,
        "4:cpu:/kubepods/burstable/pod9/c\n",
        {"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"},
    )
    assert threads.cgroup_cpu_limit(kw["cgroup_root"], kw["proc_cgroup"]) == pytest.approx(2.0)


def test_explicit_settings_win_in_order(tmp_path):
    kw = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": "100000 100000\n"})
    env = {"MADREC_NUM_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert threads.choose(7, **{**kw, "environ": env}) == threads.ThreadChoice(7, "trainer.num_threads")
    assert threads.choose(**{**kw, "environ": env}) == threads.ThreadChoice(3, "$MADREC_NUM_THREADS")
    assert threads.choose(**{**kw, "environ": {"OMP_NUM_THREADS": "5"}}) == threads.ThreadChoice(5, "$OMP_NUM_THREADS")
    assert threads.choose(**kw).threads == 1  # quota
    for bad in ("0", "two", "-1"):
        with pytest.raises(MadrecError, match=r"MADREC_NUM_THREADS=.*whole number of threads >= 1"):
            threads.choose(environ={"MADREC_NUM_THREADS": bad})


def test_local_processes_share_the_cpus(tmp_path):
    kw = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": "400000 100000\n"})
    kw["environ"] = {"LOCAL_WORLD_SIZE": "2"}
    choice = threads.choose(**kw)
    assert choice.threads == max(1, min(CPUS, 4) // 2) and "shared by 2 local processes" in choice.source


def test_affinity_is_the_default_here():
    # this machine: no quota on our cgroup (or a looser one than the affinity)
    choice = threads.choose(environ={})
    assert choice.threads <= CPUS and choice.threads >= 1


def probe(argv):
    probe.seen = torch.get_num_threads()
    return 0


def test_every_verb_runs_with_the_chosen_threads(monkeypatch):
    monkeypatch.setitem(cli.VERBS, "probe", (f"{__name__}:probe", "test verb"))
    monkeypatch.setenv("MADREC_NUM_THREADS", "1")
    before = torch.get_num_threads()
    assert cli.main(["probe"]) == 0 and probe.seen == 1
    assert torch.get_num_threads() == before  # restored for the next caller in this process
    monkeypatch.setenv("MADREC_NUM_THREADS", "nope")
    assert cli.main(["probe"]) == 2


@pytest.mark.slow
def test_cli_logs_the_choice_in_a_fresh_process(tmp_path):
    env = {**os.environ, "MADREC_NUM_THREADS": "1"}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run(
        [sys.executable, "-m", "madrec.cli", "recommend", "--ckpt", str(tmp_path / "none.ckpt"), "--history", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "torch CPU threads: 1 ($MADREC_NUM_THREADS)" in out.stderr
