"""The Lease elector against the lab API server (coordination.k8s.io/v1 Leases).

Scenarios:
- the first candidate creates the Lease and leads; a second stands by and names the holder;
- a holder that stops renewing loses the Lease to the standby once it expires, and the
  Lease's transition count goes up;
- a clean release empties holderIdentity so the standby takes over at once;
- after a release the holder's renew loop does not take the Lease back (it once did,
  within one retry period, so a standby waited out a whole lease);
- nonsensical timings are refused.
"""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client as k8s

from ipam.leader import LeaseElector
from tests.fixtures.apiserver import LabApi
from tests.ipam.harness import NS, Lab, wait_for
from vmoverlay import kube
from vmoverlay.logs import get_logger


def elector(lab_api: LabApi, identity: str, lease: int = 2) -> LeaseElector:
    return LeaseElector(
        lab_api.client(user_agent=identity),
        name="ipam-test",
        namespace=NS,
        identity=identity,
        log=get_logger("ipam-test"),
        lease_seconds=lease,
        renew_seconds=lease * 2 / 3,
        retry_seconds=0.2,
    )


def lease_spec(lab_api: LabApi) -> k8s.V1LeaseSpec:
    api = k8s.CoordinationV1Api(lab_api.client())
    return kube.call(api.read_namespaced_lease, "ipam-test", NS).spec


def run_in_thread(candidate: LeaseElector, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=candidate.run, args=(stop,), kwargs={"on_lost": stop.set})
    thread.daemon = True
    thread.start()
    return thread


def test_one_leads_the_other_takes_over_after_expiry(lab_api: LabApi) -> None:
    Lab(lab_api)  # creates the namespace
    first, second = elector(lab_api, "first"), elector(lab_api, "second")
    stop_first, stop_second = threading.Event(), threading.Event()
    run_in_thread(first, stop_first)
    wait_for("first leads", first.leading.is_set)
    run_in_thread(second, stop_second)
    time.sleep(1.0)
    assert not second.leading.is_set()
    assert second.holder == "first"
    assert lease_spec(lab_api).holder_identity == "first"

    first.leading.clear()  # a hung holder: stops renewing without releasing
    stop_first.set()
    wait_for("second takes over", second.leading.is_set, timeout=10)
    spec = lease_spec(lab_api)
    assert spec.holder_identity == "second"
    assert spec.lease_transitions == 1
    stop_second.set()


def test_release_hands_over_at_once(lab_api: LabApi) -> None:
    Lab(lab_api)
    first, second = elector(lab_api, "first", lease=30), elector(lab_api, "second", lease=30)
    stop_first, stop_second = threading.Event(), threading.Event()
    run_in_thread(first, stop_first)
    wait_for("first leads", first.leading.is_set)
    run_in_thread(second, stop_second)
    first.release()
    stop_first.set()
    wait_for("second leads well before the 30 s lease ends", second.leading.is_set, timeout=20)
    stop_second.set()


def test_released_lease_is_not_renewed_again(lab_api: LabApi) -> None:
    Lab(lab_api)
    first = elector(lab_api, "first", lease=30)
    stop_first = threading.Event()
    run_in_thread(first, stop_first)
    wait_for("first leads", first.leading.is_set)
    try:
        first.release()
        assert lease_spec(lab_api).holder_identity is None
        time.sleep(10 * first.retry_seconds)  # ten chances for the renew loop
        assert lease_spec(lab_api).holder_identity is None, "the released Lease was taken back"
        assert not first.leading.is_set()
    finally:
        stop_first.set()


def test_bad_timings_are_refused() -> None:
    with pytest.raises(ValueError, match="retry_seconds < renew_seconds < lease_seconds"):
        LeaseElector(
            k8s.ApiClient(),
            name="x",
            namespace=NS,
            identity="x",
            log=get_logger("ipam-test"),
            lease_seconds=5,
            renew_seconds=6,
        )
