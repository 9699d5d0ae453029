"""The lab's health commands without a lab: clear errors and exit codes, nothing touched.

Scenarios:
- `vmoverlay-lab check --run <unknown>`: exit 3, the reason names the run id;
- `vmoverlay-lab fault --run <unknown> list`: exit 2 with the reason; an unknown fault kind is
  refused by the parser;
- `vmoverlay-lab bench throughput --run <unknown>`: exit 2; --seconds out of range is refused;
- a lab record without two VMs on different nodes is refused by the bench with what to do;
  so is a record missing a VM's fields (no KeyError), and a node namespace that is gone;
- `vmoverlay-lab check` refuses --timeout 0 / -1 with exit 3 (bad flags), not a report of
  every node "not answering within -1s".
"""

from __future__ import annotations

import pytest

from e2e.lab import bench, check, fault

NO_RUN = "zz0000"


def test_check_without_the_lab(capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main(["--run", NO_RUN]) == 3
    assert f"no running lab with run id {NO_RUN}" in capsys.readouterr().err


def test_fault_without_the_lab(capsys: pytest.CaptureFixture[str]) -> None:
    assert fault.main(["--run", NO_RUN, "list"]) == 2
    assert NO_RUN in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fault.main(["--run", NO_RUN, "add", "unplug-everything", "--node", "n1"])


def test_bench_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["throughput", "--run", NO_RUN]) == 2
    assert NO_RUN in capsys.readouterr().err
    assert bench.main(["throughput", "--seconds", "0"]) == 2
    assert "--seconds" in capsys.readouterr().err
    one_node = {"nodes": {"n1": "ns1"}, "vms": {"vm1": {"node": "n1"}, "vm2": {"node": "n1"}}}
    with pytest.raises(bench.BenchError, match="two VMs on different nodes"):
        bench.pick_endpoints(one_node)


def test_bench_broken_lab_records() -> None:
    broken = {"nodes": {"n1": "ns1"}, "vms": {"vm1": {"node": "n1"}, "vm2": {"node": "n2"}}}
    with pytest.raises(bench.BenchError, match="failed to read the lab's VMs"):
        bench.pick_endpoints(broken)
    with pytest.raises(bench.BenchError, match="failed to read the underlay address"):
        bench.underlay_ip("vmo-zz0000-no-such-node")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_check_bad_timeout_exits_3(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        check.main(["--run", NO_RUN, "--timeout", value])
    assert exited.value.code == 3
    assert "--timeout" in capsys.readouterr().err
