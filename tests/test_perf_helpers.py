"""The benchmark's own helpers, without running a benchmark: steady-state rounds, the
process-tree memory sampler, the verdicts on the speed and memory targets, and the GPU rows,
which on a machine without a GPU must say why they were not measured."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import benchmarks.perf as perf
import benchmarks.perf_rows as perf_rows
from benchmarks.perf_results import Row, steady, table, targets
from benchmarks.sampling import TreeMemory, cpu_seconds, memory_of, role_of
from launcher.processes import descendants


def test_steady_state_is_the_median_of_rounds_after_the_first():
    assert steady([20.0, 3.0, 5.0, 4.0]) == 4.0
    assert steady([7.0]) == 7.0


def test_the_tree_sampler_sums_the_memory_of_child_processes():
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(200_000_000); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 30
        while memory_of(child.pid)[0] < 200_000_000 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert child.pid in descendants(os.getpid())
        with TreeMemory(os.getpid(), include_root=False, interval=0.05) as mem:
            time.sleep(0.3)
        assert mem.peak_rss >= 200_000_000 and 0 < mem.peak_pss <= mem.peak_rss
        assert mem.peak_procs >= 1 and any(name.startswith("python") for name in mem.peak_names)
        assert mem.cpu_by_role()  # CPU seconds by role, even if tiny
    finally:
        child.kill()
        child.wait()


def test_a_process_is_told_by_its_command_line_and_a_gone_one_reads_as_nothing():
    busy = "import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", busy, "flower-supernode"])
    try:
        deadline = time.monotonic() + 30
        while (cpu_seconds(child.pid) or 0) < 0.2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cpu_seconds(child.pid) >= 0.2
        assert role_of(child.pid) == "SuperNodes"
    finally:
        child.kill()
        child.wait()
    assert memory_of(child.pid) == (0, 0) and cpu_seconds(child.pid) is None and role_of(child.pid) == "other"


def test_targets_say_met_or_by_how_much_they_were_missed():
    rows = [
        Row("overhead", "mlp: flwr run simulation, 100 clients", ratio=1.1),
        Row("coldstart", "command to end of round 1, 100 clients", first_round_s=18.0),
        Row("scale", "1,000 clients (60 images each, 100 per round)", peak_rss_gb=3.6),
        Row(
            "scale", "1,000 clients (60 images each, 100 per round, one worker (--cpus-per-client 2))", peak_rss_gb=2.0
        ),
        Row("scale", "10,000 clients (6 images each, 1,000 per round)", peak_rss_gb=3.9),
    ]
    text = targets(rows)
    assert "| simulation / plain loop, MLP, steady state | at most 1.3 x | 1.10 x | met |" in text
    assert "| command to end of round 1, 100 clients | at most 15 s | 18.00 s | missed by 3.00 s (20% over) |" in text
    assert "3.60 GB | missed by 0.60 GB (20% over)" in text  # the single-worker row does not stand for the target
    assert "| peak memory, 10,000 clients (RSS summed) | at most 4 GB | 3.90 GB | met |" in text


def test_the_table_has_a_row_per_measurement_with_its_load():
    text = table([Row("gpu", "x", notes="not measured: no GPU", load=(2.5, 3.25))])
    assert text.splitlines()[2] == "| gpu: x |  |  |  |  |  | 2.5 → 3.2 | not measured: no GPU |"


def test_without_a_gpu_the_gpu_rows_say_not_measured_and_why(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(perf_rows, "visible_gpus", lambda: [])
    rows = perf_rows.gpu(2, tmp_path)
    assert len(rows) == 2 and all(r.notes.startswith("not measured: no GPU on this machine") for r in rows)
    monkeypatch.setattr(perf_rows, "visible_gpus", lambda: ["NVIDIA H100"])
    assert "nvidia-smi shows NVIDIA H100 but torch" in perf_rows.gpu(2, tmp_path)[0].notes


def test_with_a_gpu_the_gpu_rows_compare_cuda_with_the_cpu_and_run_a_simulation(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(perf_rows, "throughput", lambda kind, device: {"cpu": 1000.0, "cuda": 8000.0}[device])
    runs = []

    def fake_launch_gpu(num_nodes, run_config, out):
        runs.append((num_nodes, run_config))
        return {"times": [9.0, 2.0, 2.0], "total_s": 30.0, "peak_rss": 5e9, "peak_pss": 3e9}

    monkeypatch.setattr(perf_rows, "launch_gpu", fake_launch_gpu)
    rows = perf_rows.gpu(3, tmp_path)
    assert [r.ratio for r in rows[:2]] == [8.0, 8.0]
    assert "8,000 images/s on CUDA, 1,000 on the CPU" in rows[0].notes
    assert rows[2].s_per_round == 2.0 and runs[0][0] == 100 and runs[0][1]["num-server-rounds"] == 3


@pytest.mark.parametrize("bad", ["overhead,speed", "gpus"])
def test_an_unknown_section_is_refused(bad, capsys):
    with pytest.raises(SystemExit):
        perf.main(["--only", bad, "--no-write"])
    assert "unknown section" in capsys.readouterr().err


def test_the_sampler_times_each_short_lived_clientapp_process_from_its_start():
    from benchmarks.perf_rows import message_note
    from benchmarks.sampling import CLIENTAPP_PROCESS

    with TreeMemory(os.getpid(), interval=0.05) as mem:
        children = [
            subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({s})", "flwr-clientapp"])
            for s in (0.6, 1.5)
        ]
        for child in children:
            child.wait()
        time.sleep(0.2)
    lives = mem.lifetimes(CLIENTAPP_PROCESS)
    assert len(lives) == 2 and 0.6 <= lives[0] < 1.5 <= lives[1] < 3.0
    assert len(mem.cpu_of(CLIENTAPP_PROCESS)) == 2
    note = message_note(lives, [0.1, 0.3])
    assert note.startswith("one ClientApp process per message: 2 processes, each alive") and "0.20 CPU s" in note
    assert message_note([], []) == "no ClientApp process seen"
    split = message_note([1.0, 1.0, 5.0, 5.0], [0.2, 0.4, 1.5, 1.7], [0.2, 0.4])
    assert split.endswith(", of which 2 answered the query (no training) with 0.30 CPU s each (median)")


def test_a_fork_servers_child_counts_as_a_clientapp_process_and_its_asker_does_not(tmp_path):
    from benchmarks.sampling import CLIENTAPP_PROCESS, FORK_SERVERS

    named = "import sys, time; open('/proc/self/comm', 'w').write(sys.argv[1]); time.sleep(30)"
    cmd = [sys.executable, "-c", named]
    children = [
        subprocess.Popen(cmd + ["flwr-clientapp", "-m", "launcher.forkserver"]),
        subprocess.Popen(cmd + ["flwr-warm-ask", "/tmp/x/bin/flwr-clientapp"]),
        subprocess.Popen(cmd + ["python3", "-m", "launcher.forkserver"]),
    ]
    try:
        time.sleep(0.5)
        roles = [role_of(child.pid) for child in children]
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert roles == [CLIENTAPP_PROCESS, "flwr-clientapp asking a fork server", FORK_SERVERS]


def test_pickup_is_how_long_a_rounds_messages_waited_for_their_last_process():
    seen = {"round 0": 0.0, "round 1": 10.0, "round 2": 20.0, "round 3": 30.0}
    started = [1.0, 1.2, 11.0, 13.5, 12.0, 20.1, 20.4, 22.9]
    assert perf_rows.pickup_delays(started, seen) == pytest.approx([3.5, 2.9])
    assert "2.9-3.5 s" in perf_rows.pickup_note([3.5, 2.9]) and perf_rows.pickup_note([]) == "message pickup not seen"


def test_the_warm_deployment_rows_are_judged_against_their_targets():
    rows = [
        Row("deployment", "3 SuperNodes, plain", ratio=6.0, extra={"warm": False, "message-cpu-s": [3.5]}),
        Row("deployment", "3 SuperNodes, warm", ratio=2.5, extra={"warm": True, "query-cpu-s": [0.3, 0.4, 0.9]}),
        Row("deployment", "3 SuperNodes, warm, 0.5 s", ratio=1.5, extra={"warm": True, "idle-s": 0.5}),
    ]
    text = targets(rows)
    assert "| at most 2 x | 2.50 x | missed by 0.50 x (25% over) |" in text
    assert "| the same, a shorter wait after an empty pull | at most 2 x | 1.50 x | met |" in text
    assert "(the queries) | at most 0.5 s | 0.40 s | met |" in text


def test_what_one_node_costs_is_the_slope_over_the_node_counts():
    from benchmarks.nodes import slope

    assert slope([(0, 100.0), (30, 130.0), (60, 160.0)]) == pytest.approx(1.0)
    assert slope([(0, 100.0), (30, 145.0), (60, 160.0)]) == pytest.approx(1.0)  # least squares, not the ends
    with pytest.raises(ValueError, match="two different node counts"):
        slope([(30, 1.0), (30, 2.0)])


def test_heartbeat_failures_are_the_nodes_flower_ever_marked_offline():
    from benchmarks.node_fleet import offline_events

    listed = [
        {"status": "online", "offline-at": "N/A"},
        {"status": "online", "offline-at": "2026-12-06 05:01:02Z"},  # missed a heartbeat, came back
        {"status": "offline", "offline-at": "2026-12-06 05:03:00Z"},
        {"status": "registered", "offline-at": "N/A"},  # never connected
    ]
    assert offline_events(listed) == {"online": 2, "not-online": 2, "ever-offline": 2}


def test_the_node_count_is_checked_against_memory_and_the_fix_is_named(monkeypatch):
    import benchmarks.nodes as nodes_rows

    assert nodes_rows.nodes_that_fit(20e9, per_node=250e6, reserve=4e9) == 64
    assert nodes_rows.nodes_that_fit(3e9, per_node=250e6, reserve=4e9) == 0
    monkeypatch.setattr(nodes_rows.os, "geteuid", lambda: 0)
    monkeypatch.setattr(nodes_rows.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    reason = nodes_rows.unmet_needs(500, available=20e9)
    assert reason.startswith("--nodes 500:") and "give --nodes 64 or fewer" in reason
    assert nodes_rows.unmet_needs(60, available=20e9) is None
    assert "at least 2" in nodes_rows.unmet_needs(1, available=20e9)
    monkeypatch.setattr(nodes_rows.shutil, "which", lambda tool: None if tool == "nginx" else "/usr/sbin/ip")
    assert "nginx missing: run deploy/bare-host/host-packages.sh" in nodes_rows.unmet_needs(60, available=20e9)
    rows = nodes_rows.nodes(60, work_dir=None)  # nothing starts: one row that says why
    assert [r.notes for r in rows] == ["not measured: nginx missing: run deploy/bare-host/host-packages.sh as root"]


def test_the_nodes_run_config_uses_only_keys_the_app_declares(tmp_path):
    import tomllib

    from benchmarks.nodes import tiny_run_config
    from launcher import PROJECT_ROOT

    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    config = tiny_run_config(40, 0.1, "nodes-40-0.1", tmp_path)
    assert set(config) <= set(declared)  # flwr run refuses any other key
    assert config["min-available-nodes"] == 40 and config["fraction-train"] == 0.1
    assert config["output-dir"] == str(tmp_path)


def test_what_went_wrong_is_counted_in_the_superlink_and_node_logs():
    from benchmarks.nodes import count_events, events_note

    superlink = (
        "ERROR: [/v1/fleet/pull-messages][UnexpectedError:OperationalError] (sqlite3.OperationalError) "
        "database is locked\nERROR: [/v1/fleet/send-node-heartbeat][UnexpectedError:ClientDisconnect]\n"
        "INFO: [Fleet.DeactivateNode] Deactivated node_id=1\nINFO: [Fleet.ActivateNode] Activated node_id=1\n"
    )
    nodes = (
        "ERROR: Server error '500 Internal Server Error' for url 'https://10.254.0.1:8443/v1/fleet/pull-messages'\n"
        "fedmnist-supervise: starting flower-supernode again in 2 s\nINFO: Task stopped.\nINFO: Task stopped.\n"
    )
    events = count_events(superlink, nodes)
    assert events == {
        "database-locked": 1,
        "heartbeat-errors": 1,
        "nodes-deactivated": 1,
        "http-500-at-nodes": 1,
        "node-restarts": 1,
        "tasks-restarted": 2,
    }
    assert count_events("INFO: [Fleet.ActivateNode] Activated node_id=1\n", "") == dict.fromkeys(events, 0)
    assert events_note(dict.fromkeys(events, 0)) == "logs: no errors"
    assert events_note(events).startswith("logs: database-locked 1, heartbeat-errors 1,")


def test_the_nodes_usage_sums_each_process_tree_and_the_run_peaks_keep_the_highest(tmp_path):
    from benchmarks.node_fleet import Deployment
    from benchmarks.node_usage import RunPeaks, node_pids, node_side, rss_of
    from launcher.flower_home import FlowerHome
    from launcher.processes import stop

    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    parent = "import subprocess, sys, time; x = bytearray(150_000_000); subprocess.Popen(sys.argv[1:]); time.sleep(30)"
    dep = Deployment(FlowerHome(tmp_path), tmp_path)
    dep.superlink, dep.proxy = subprocess.Popen(sleeper), subprocess.Popen(sleeper)
    dep.nodes = [subprocess.Popen([sys.executable, "-c", parent, *sleeper])]
    try:
        deadline = time.monotonic() + 30
        while (len(descendants(dep.nodes[0].pid)) < 1 or rss_of([dep.nodes[0].pid]) < 150_000_000) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        pids = node_pids(dep)
        assert pids[0] == dep.nodes[0].pid and len(pids) == 2  # the node and what it started
        side = node_side(dep)
        assert side.rss >= 150_000_000 and 0 < side.pss <= side.rss and side.cpu > 0
        with RunPeaks(dep) as peaks:
            time.sleep(0.2)
        assert peaks.peak["node-side"] >= 150_000_000 and peaks.peak["superlink"] > 0 and peaks.peak["proxy"] > 0
        assert peaks.peak["all"] >= peaks.peak["node-side"] + peaks.peak["superlink"] and peaks.serverapp_cpu == {}
        assert rss_of([dep.superlink.pid, 2**22 + 1]) == rss_of([dep.superlink.pid])  # a gone pid adds nothing
    finally:
        for proc in (*dep.nodes, dep.proxy, dep.superlink):
            stop(proc, grace=0)
