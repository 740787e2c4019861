"""What a process runs on, as the manifest and the speed benchmark record it (task/host.py)."""

from task.host import PACKAGES, machine, versions


def test_versions_name_python_and_every_package():
    found = versions()
    assert set(found) == {"python", *PACKAGES}
    assert found["flwr"] == "1.41.0" and found["python"].startswith("3.11")
    assert versions(("no-such-package-here",))["no-such-package-here"] == "not installed"


def test_machine_says_cpu_memory_and_gpus():
    found = machine()
    assert set(found) == {"system", "host", "cpu", "cpu-count", "memory-gb", "gpus"}
    assert found["cpu"] and found["cpu-count"] >= 1 and isinstance(found["gpus"], list)
    assert found["memory-gb"] is None or found["memory-gb"] > 0
