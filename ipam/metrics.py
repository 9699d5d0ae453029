"""The IPAM controller's Prometheus metrics, in a registry of their own.

- ``vmoverlay_ipam_pool_size`` / ``_allocated`` / ``_free`` {pool}: usage per pool;
- ``vmoverlay_ipam_allocation_duration_seconds``: from the worker picking up a
  VM without an address to its ``status.network`` being written;
- ``vmoverlay_ipam_conflicts_total``: 409 AlreadyExists on create, i.e. another
  allocator held the candidate address (expected under races; each one costs
  a retry, never a duplicate);
- ``vmoverlay_ipam_address_conflicts_total``: a VM's recorded address is held by
  another VM's allocation (reported, never repaired silently);
- ``vmoverlay_ipam_leaks_reclaimed_total``: allocations removed by the leak sweeper;
- ``vmoverlay_ipam_releases_total``: allocations freed after their VM was deleted;
- ``vmoverlay_ipam_errors_total{reason}``: failed API calls and other errors;
- ``vmoverlay_ipam_leader``: 1 while this replica holds the lease (or runs without one).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vmoverlay.metrics import build_info

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IPAMMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        build_info(r, "ipam")
        self.pool_size = Gauge(
            "vmoverlay_ipam_pool_size", "Allocatable addresses per pool", ["pool"], registry=r
        )
        self.pool_allocated = Gauge(
            "vmoverlay_ipam_pool_allocated", "Allocated addresses per pool", ["pool"], registry=r
        )
        self.pool_free = Gauge(
            "vmoverlay_ipam_pool_free", "Free addresses per pool", ["pool"], registry=r
        )
        self.allocation_seconds = Histogram(
            "vmoverlay_ipam_allocation_duration_seconds",
            "Time from picking up a VM without an address to writing its status.network",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.conflicts = Counter(
            "vmoverlay_ipam_conflicts", "Create of a taken address refused (409)", registry=r
        )
        self.address_conflicts = Counter(
            "vmoverlay_ipam_address_conflicts",
            "VMs whose recorded address is held by another VM",
            registry=r,
        )
        self.leaks = Counter(
            "vmoverlay_ipam_leaks_reclaimed",
            "Leaked allocations removed by the sweeper",
            registry=r,
        )
        self.releases = Counter(
            "vmoverlay_ipam_releases", "Allocations freed after their VM was deleted", registry=r
        )
        self.errors = Counter("vmoverlay_ipam_errors", "Errors by reason", ["reason"], registry=r)
        self.leader = Gauge(
            "vmoverlay_ipam_leader", "1 while this replica is the active controller", registry=r
        )

    def error(self, reason: str) -> None:
        self.errors.labels(reason=reason).inc()

    def set_pool(self, pool: str, *, size: int, allocated: int, free: int) -> None:
        self.pool_size.labels(pool=pool).set(size)
        self.pool_allocated.labels(pool=pool).set(allocated)
        self.pool_free.labels(pool=pool).set(free)

    def drop_pool(self, pool: str) -> None:
        for gauge in (self.pool_size, self.pool_allocated, self.pool_free):
            try:
                gauge.remove(pool)
            except KeyError:
                continue
