"""The node agent: watch Nodes and VirtualMachines, keep this node's overlay true.

Threads:

- two watchers (Nodes, VirtualMachines): list, then watch from the list's
  resourceVersion; a watch that ends resumes from the last version seen, a
  410 Gone relists; while the API is away they retry with capped back-off and
  the data plane stays exactly as it is. Each event updates an in-memory
  cache and wakes the reconciler.
- the reconciler (the main thread): level-triggered. Woken by any event (or
  the periodic full resync), it computes the desired state from the whole
  cache (pure, ``desired.py``) and applies the difference (``dataplane.py``).
  Bursts of events coalesce into one pass. Nothing is touched before both
  lists have been read once, so a restart never removes live entries.
- the announcer (``announce.py``) and the metrics/health server.

Each change is logged once, with node/VM, old and new VTEP. ``/status`` gives
the agent's view (config, underlay, peers, FDB) as JSON for the fabric health
check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vmoverlay import api, kube
from vmoverlay.logs import StructLogger, get_logger
from vmoverlay.metrics import HealthServer, build_info
from vxlan_manager.announce import Announcement, Announcer
from vxlan_manager.config import AgentConfig, ConfigError, Underlay, resolve_underlay
from vxlan_manager.dataplane import Dataplane, SyncResult
from vxlan_manager.desired import (
    DesiredModel,
    DesiredState,
    FdbEntry,
    peer_changes,
    placement_changes,
)
from vxlan_manager.netlink import Collision, Kernel, NetlinkFailure
from vxlan_manager.state import StateError

WATCH_TIMEOUT = 300  # seconds a watch request stays open before we resume it
LIST_PAGE = 500  # objects per list page
WATCH_BACKOFF_CAP = 10.0  # longest wait between two tries while the API is away
COMPONENT = "vxlan-manager"


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        build_info(r, COMPONENT)
        self.peers = Gauge(
            "vmoverlay_agent_peers", "Other nodes with an FDB flood entry", ["ready"], registry=r
        )
        self.fdb_entries = Gauge(
            "vmoverlay_agent_fdb_entries",
            "FDB entries wanted on the VXLAN device",
            ["kind"],
            registry=r,
        )
        self.neighbours = Gauge(
            "vmoverlay_agent_neighbour_entries",
            "Permanent neighbour entries on the bridge",
            registry=r,
        )
        self.problems = Gauge(
            "vmoverlay_agent_problems", "Nodes or VMs the agent cannot place", registry=r
        )
        self.duration = Histogram(
            "vmoverlay_agent_reconcile_duration_seconds",
            "Time of one reconcile pass",
            ["mode"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.event_latency = Histogram(
            "vmoverlay_agent_event_to_kernel_seconds",
            "Time from receiving an API event to the kernel holding its result",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.errors = Counter(
            "vmoverlay_agent_reconcile_errors_total", "Failed reconcile passes", registry=r
        )
        self.watch_restarts = Counter(
            "vmoverlay_agent_watch_restarts_total",
            "Watch streams restarted",
            ["resource", "reason"],
            registry=r,
        )
        self.garp = Counter(
            "vmoverlay_agent_garp_sent_total",
            "Gratuitous ARP / unsolicited NA frames sent",
            ["family"],
            registry=r,
        )
        self.repairs = Counter(
            "vmoverlay_agent_device_repairs_total",
            "Device attributes repaired",
            ["attribute"],
            registry=r,
        )
        self.fdb_changes = Counter(
            "vmoverlay_agent_fdb_changes_total", "FDB entries changed", ["op"], registry=r
        )


@dataclass
class Snapshot:
    """What /status shows; replaced whole after each pass, so readers need no lock."""

    synced: dict[str, bool] = field(default_factory=dict)
    underlay: Underlay | None = None
    desired: DesiredState | None = None
    fdb: frozenset[FdbEntry] = frozenset()
    last_sync: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        client: k8s.ApiClient,
        kernel: Kernel | None = None,
        logger: StructLogger | None = None,
    ) -> None:
        self.cfg = cfg
        self.log = logger or get_logger(COMPONENT, node=cfg.node)
        self.client = client
        self.metrics = AgentMetrics()
        self.kernel = kernel or Kernel(logger=self.log)
        self.dataplane = Dataplane(self.kernel, state_file=cfg.state_file, logger=self.log)
        self.announcer = Announcer(cfg.bridge, on_sent=self._count_announcement)
        self.nodes: dict[str, api.Node] = {}
        self.vms: dict[str, api.VirtualMachine] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._synced = {"nodes": False, "virtualmachines": False}
        self._event_times: list[float] = []
        # Changes since the last pass, (resource, key, object or None when deleted),
        # and whether the model must be rebuilt from the caches (after a relist).
        self._pending: list[tuple[str, str, Any]] = []
        self._rebuild = True
        self._model: DesiredModel | None = None
        self._last: DesiredState | None = None
        self._underlay: Underlay | None = None
        self._tick = time.monotonic()
        self._ready = False
        self.snapshot = Snapshot(synced=dict(self._synced))

    # ------------------------------------------------------------ life cycle

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def serve(self) -> HealthServer:
        server = HealthServer(
            self.metrics.registry, self.cfg.metrics_addr, ready=self.readiness, alive=self.liveness
        )
        server.add_json_route("/status", self.status)
        return server.start()

    def run(self) -> None:
        """Reconcile until :meth:`stop`. Raises :class:`Collision` if refused at start."""
        if self.cfg.announce:
            self.announcer.start()
        for resource, lister in (("nodes", self._list_nodes), ("virtualmachines", self._list_vms)):
            threading.Thread(
                target=self._watch_loop,
                args=(resource, lister),
                name=f"watch-{resource}",
                daemon=True,
            ).start()
        next_full = time.monotonic()
        delays = kube.backoff_delays(base=0.5, cap=30.0)
        retry_at = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            self._tick = now
            wait_until = next_full if not retry_at else min(next_full, retry_at)
            self._wake.wait(timeout=min(5.0, max(0.0, wait_until - now)))
            self._wake.clear()
            if self._stop.is_set():
                break
            now = self._tick = time.monotonic()
            if not all(self._synced.values()) or (retry_at and now < retry_at):
                continue
            full = now >= next_full or retry_at > 0
            error = self._pass(full=full)
            if error is None:
                retry_at = 0.0
                delays = kube.backoff_delays(base=0.5, cap=30.0)
                if full:
                    next_full = time.monotonic() + self.cfg.resync_period
            else:
                delay = next(delays)
                retry_at = time.monotonic() + delay
                self.log.error(
                    "reconcile failed, will retry", error=error, full=full, retry_in=f"{delay:.1f}s"
                )
        self.announcer.stop()

    def _pass(self, *, full: bool) -> str | None:
        """One reconcile pass; the error that the caller retries after a back-off, or None."""
        try:
            self.reconcile(full=full)
            return None
        except Collision as exc:
            self.metrics.errors.inc()
            self.snapshot.error = str(exc)
            if not self._ready:
                raise
            self.log.error(
                "configuration collides with another device; data plane left as is", error=str(exc)
            )
            return str(exc)
        except (NetlinkFailure, StateError, ConfigError, OSError) as exc:
            self.metrics.errors.inc()
            self.snapshot.error = str(exc)
            return str(exc)

    # ------------------------------------------------------------ reconcile

    def reconcile(self, *, full: bool) -> SyncResult:
        started = time.monotonic()
        with self._lock:
            local = self.nodes.get(self.cfg.node)
            events, self._event_times = self._event_times, []
        underlay = self._resolve_underlay(local, full=full)
        desired = self._desired(underlay)
        result = self.dataplane.sync(desired, full=full)
        done = time.monotonic()
        for t in events:
            self.metrics.event_latency.observe(done - t)
        self.metrics.duration.labels(mode="full" if full else "incremental").observe(done - started)
        self._report(self._last, desired, result, done - started)
        self._last = desired
        self._ready = True
        self.snapshot = Snapshot(
            synced=dict(self._synced),
            underlay=underlay,
            desired=desired,
            fdb=self.dataplane.fdb,
            last_sync={
                "full": full,
                "duration_seconds": round(done - started, 6),
                "unix_time": time.time(),
            },
        )
        return result

    def _desired(self, underlay: Underlay) -> DesiredState:
        """Update the model with the pending changes, or rebuild it from the caches."""
        networks = self.dataplane.bridge_networks
        model = self._model
        with self._lock:
            rebuild = (
                self._rebuild
                or model is None
                or model.underlay != underlay
                or [str(n) for n in model.networks] != networks
            )
            pending, self._pending = self._pending, []
            if rebuild:
                nodes, vms = list(self.nodes.values()), list(self.vms.values())
                self._rebuild = False
        if rebuild or model is None:
            model = DesiredModel(self.cfg, underlay, bridge_networks=networks)
            for node in nodes:
                model.set_node(node)
            for vm in vms:
                model.set_vm(vm)
            self._model = model
        else:
            for resource, key, item in pending:
                if resource == "nodes":
                    model.set_node(item) if item is not None else model.delete_node(key)
                else:
                    model.set_vm(item) if item is not None else model.delete_vm(key)
        return model.state()

    def _resolve_underlay(self, local: api.Node | None, *, full: bool) -> Underlay:
        vtep = local.vtep_ip if local else None
        if (
            self._underlay is not None
            and not full
            and (
                self.cfg.underlay_address
                or self.cfg.underlay_interface
                or vtep == self._underlay.address
            )
        ):
            return self._underlay
        if local is None and not self.cfg.underlay_address and not self.cfg.underlay_interface:
            raise ConfigError(
                f"node {self.cfg.node} is not in the Node list: check --node (the Kubernetes node name)"
            )
        underlay = resolve_underlay(self.cfg, node_vtep=vtep, interfaces=self.kernel.interfaces())
        if underlay != self._underlay:
            self.log.info(
                "underlay",
                address=underlay.address,
                interface=underlay.interface,
                interface_mtu=underlay.interface_mtu,
                overlay_mtu=underlay.mtu,
            )
            if vtep and vtep != underlay.address:
                # Peers send to what the Node object says, not to what we chose.
                self.log.warning(
                    "this node's Node object advertises another VTEP than the agent uses; "
                    "set the vmoverlay.io/vtep-ip annotation to the underlay address",
                    advertised=vtep,
                    used=underlay.address,
                )
        self._underlay = underlay
        return underlay

    def _report(
        self, old: DesiredState | None, new: DesiredState, result: SyncResult, seconds: float
    ) -> None:
        m = self.metrics
        for diff in result.device_repairs:
            m.repairs.labels(attribute=diff.attribute).inc()
        m.fdb_changes.labels(op="add").inc(len(result.fdb.add))
        m.fdb_changes.labels(op="replace").inc(len(result.fdb.replace))
        m.fdb_changes.labels(op="remove").inc(len(result.fdb.remove))
        ready = sum(1 for p in new.peers if p.ready)
        m.peers.labels(ready="true").set(ready)
        m.peers.labels(ready="false").set(len(new.peers) - ready)
        for kind, count in new.fdb_counts().items():
            m.fdb_entries.labels(kind=kind).set(count)
        m.neighbours.set(len(new.neighbours))
        m.problems.set(len(new.problems))

        if old is None:
            counts = new.fdb_counts()
            self.log.info(
                "first sync done",
                peers=len(new.peers),
                flood_entries=counts["flood"],
                vm_entries=counts["vm"],
                added=len(result.fdb.add),
                replaced=len(result.fdb.replace),
                removed=len(result.fdb.remove),
                seconds=round(seconds, 4),
            )
        else:
            self._log_changes(old, new)
        for entry in result.fdb.remove:
            if (
                entry.kind == "flood"
                and old is not None
                and entry.dst not in {p.vtep for p in old.peers}
            ):
                self.log.info("removed stray flood entry", dst=entry.dst)
        new_problems = set(new.problems) - set(old.problems if old else ())
        for problem in sorted(new_problems):
            self.log.warning("cannot place", problem=problem)

    def _log_changes(self, old: DesiredState, new: DesiredState) -> None:
        for name, before, after in peer_changes(old, new):
            if before is None and after is not None:
                self.log.info(
                    "peer added", peer=name, old_vtep=None, new_vtep=after.vtep, ready=after.ready
                )
            elif after is None and before is not None:
                self.log.info("peer removed", peer=name, old_vtep=before.vtep, new_vtep=None)
            elif before is not None and after is not None and before.vtep != after.vtep:
                self.log.info("peer moved", peer=name, old_vtep=before.vtep, new_vtep=after.vtep)
            elif after is not None and not after.ready:
                self.log.warning("peer not ready, entries kept", peer=name, vtep=after.vtep)
            elif after is not None:
                self.log.info("peer ready again", peer=name, vtep=after.vtep)
        local = {v.vm: v for v in new.local_vms}
        for change in placement_changes(old, new):
            self.log.info(
                "VM placement changed",
                vm=change.vm,
                mac=change.mac,
                old_node=change.old_node,
                new_node=change.new_node,
                old_vtep=change.old_vtep,
                new_vtep=change.new_vtep,
            )
            arrived = local.get(change.vm)
            if arrived is not None and change.old_node != self.cfg.node:
                self._welcome(arrived.vm, arrived.ip, arrived.mac)

    def _welcome(self, vm: str, ip: str, mac: str) -> None:
        """A VM now runs here: unlearn its old remote location, then announce it."""
        try:
            if self.kernel.forget_learned(self.dataplane.vxlan_index, mac):
                self.log.info("forgot remote location learnt by the bridge", vm=vm, mac=mac)
        except NetlinkFailure as exc:
            self.log.warning("could not unlearn the old location", vm=vm, mac=mac, error=str(exc))
        if self.cfg.announce:
            self.announcer.announce(vm, ip, mac)

    def _count_announcement(self, ann: Announcement) -> None:
        self.metrics.garp.labels(family="ipv6" if ":" in ann.ip else "ipv4").inc()

    # ------------------------------------------------------------ watches

    def _list_nodes(self, **kwargs: Any) -> Any:
        """GET /api/v1/nodes (list or watch) through the client's generic request path.

        The generated CoreV1Api module alone adds about 20 MB to the agent's RSS for
        one call we need; the request, auth and errors are the official client's.
        The raw response is returned (callers stream or parse it).
        """
        names = {
            "watch": "watch",
            "resource_version": "resourceVersion",
            "timeout_seconds": "timeoutSeconds",
            "allow_watch_bookmarks": "allowWatchBookmarks",
            "limit": "limit",
            "_continue": "continue",
        }
        query = [(names[k], v) for k, v in kwargs.items() if k in names and v is not None]
        request = self.client.param_serialize(
            "GET",
            "/api/v1/nodes",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(*request, _request_timeout=kwargs.get("_request_timeout"))
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response

    def _list_vms(self, **kwargs: Any) -> Any:
        return k8s.CustomObjectsApi(self.client).list_cluster_custom_object(
            api.GROUP, api.VERSION, api.VM_PLURAL, **kwargs
        )

    def _watch_loop(self, resource: str, lister: Callable[..., Any]) -> None:
        delays = kube.backoff_delays(base=0.2, cap=WATCH_BACKOFF_CAP)
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist(resource, lister)
                    delays = kube.backoff_delays(base=0.2, cap=WATCH_BACKOFF_CAP)
                rv = self._stream(resource, lister, rv)
                self.metrics.watch_restarts.labels(resource=resource, reason="ended").inc()
            except kube.Gone:
                self.metrics.watch_restarts.labels(resource=resource, reason="gone").inc()
                self.log.info("watch expired (410 Gone), relisting", resource=resource)
                rv = None
            except kube.KubeError as exc:
                self.metrics.watch_restarts.labels(resource=resource, reason="error").inc()
                delay = next(delays)
                self.log.warning(
                    "API unavailable, data plane kept; will retry",
                    resource=resource,
                    retry_in=f"{delay:.2f}s",
                    error=str(exc),
                )
                rv = None
                self._stop.wait(delay)

    def _relist(self, resource: str, lister: Callable[..., Any]) -> str:
        """List in pages (bounded memory with thousands of VMs); replace the cache."""
        parse: Callable[[dict[str, Any]], Any] = (
            api.Node.from_obj if resource == "nodes" else api.VirtualMachine.from_obj
        )
        items: list[Any] = []
        rv, cont = "", None
        while True:
            kwargs: dict[str, Any] = {"limit": LIST_PAGE, "_request_timeout": 30}
            if cont:
                kwargs["_continue"] = cont
            with kube.api_errors():
                body = _json(lister(_preload_content=False, **kwargs))
            meta = body.get("metadata") or {}
            rv = rv or str(meta.get("resourceVersion") or "")
            items.extend(_parse(body.get("items") or [], parse, self.log))
            cont = meta.get("continue")
            if not cont:
                break
        with self._lock:
            if resource == "nodes":
                self.nodes = {n.name: n for n in items}
            else:
                self.vms = {v.key: v for v in items}
            self._event_times.append(time.monotonic())
            self._rebuild = True
            self._synced[resource] = True
        self._wake.set()
        self.log.debug("listed", resource=resource, count=len(items))
        return rv

    def _stream(self, resource: str, lister: Callable[..., Any], rv: str) -> str:
        w = k8s_watch.Watch()
        with kube.api_errors():
            for event in _events(w, lister, rv):
                kind, obj = event.get("type"), event.get("raw_object") or {}
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply_event(resource, kind, obj)
                if self._stop.is_set():
                    w.stop()
        return rv

    def _apply_event(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        parse = api.Node.from_obj if resource == "nodes" else api.VirtualMachine.from_obj
        try:
            item = parse(obj)
        except api.InvalidObject as exc:
            self.log.warning("ignoring malformed object", resource=resource, error=str(exc))
            return
        with self._lock:
            table: dict[str, Any] = self.nodes if resource == "nodes" else self.vms
            key = item.name if isinstance(item, api.Node) else item.key
            old = table.pop(key, None) if kind == "DELETED" else table.get(key)
            if kind != "DELETED":
                table[key] = item
            if kind != "DELETED" and old is not None and _relevant(old) == _relevant(item):
                return  # a heartbeat or a field we do not use: nothing to reconcile
            self._pending.append((resource, key, None if kind == "DELETED" else item))
            self._event_times.append(time.monotonic())
        self._wake.set()

    # ------------------------------------------------------------ probes

    def readiness(self) -> tuple[bool, str]:
        if not all(self._synced.values()):
            waiting = ", ".join(k for k, v in self._synced.items() if not v)
            return False, f"waiting for the first list of {waiting}"
        if not self._ready:
            return (
                False,
                f"devices not built yet{': ' + self.snapshot.error if self.snapshot.error else ''}",
            )
        return True, "ok"

    def liveness(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self._tick
        if stalled > 60:
            return False, f"reconcile loop stalled for {stalled:.0f}s"
        return True, "ok"

    def status(self) -> dict[str, Any]:
        snap = self.snapshot
        desired = snap.desired
        ok, why = self.readiness()
        out: dict[str, Any] = {
            "node": self.cfg.node,
            "ready": ok,
            "reason": why,
            "config": self.cfg.to_dict(),
            "synced": snap.synced,
            "underlay": None,
            "device": None,
            "peers": [],
            "fdb": [{"mac": e.mac, "dst": e.dst, "kind": e.kind} for e in sorted(snap.fdb)],
            "problems": [],
            "last_sync": snap.last_sync,
            "error": snap.error,
        }
        if snap.underlay is not None:
            u = snap.underlay
            out["underlay"] = {
                "address": u.address,
                "interface": u.interface,
                "family": u.family,
                "interface_mtu": u.interface_mtu,
                "mtu": u.mtu,
            }
        if desired is not None:
            d = desired.device
            out["device"] = {
                "name": d.name,
                "vni": d.vni,
                "port": d.port,
                "local": d.local,
                "mtu": d.mtu,
                "learning": d.learning,
                "bridge": d.master,
            }
            out["peers"] = [
                {"node": p.node, "vtep": p.vtep, "ready": p.ready} for p in desired.peers
            ]
            out["fdb_counts"] = desired.fdb_counts()
            out["vms"] = {
                "remote": [
                    {"vm": v.vm, "mac": v.mac, "ip": v.ip, "node": v.node, "vtep": v.vtep}
                    for v in desired.remote_vms
                ],
                "local": [{"vm": v.vm, "mac": v.mac, "ip": v.ip} for v in desired.local_vms],
            }
            out["neighbours"] = sorted(f"{n.ip} {n.mac}" for n in desired.neighbours)
            out["problems"] = list(desired.problems)
        return out


def _events(w: k8s_watch.Watch, lister: Callable[..., Any], rv: str) -> Iterator[dict[str, Any]]:
    stream: Iterator[dict[str, Any]] = w.stream(
        lister,
        resource_version=rv,
        timeout_seconds=WATCH_TIMEOUT,
        allow_watch_bookmarks=True,
        _request_timeout=(10, WATCH_TIMEOUT + 30),
    )
    return stream


def _relevant(item: api.Node | api.VirtualMachine) -> tuple[Any, ...]:
    """The fields of an object that the desired state depends on."""
    if isinstance(item, api.Node):
        return (item.vtep_ip, item.ready)
    return (item.node, item.network, item.phase)


def _json(raw: Any) -> dict[str, Any]:
    import json

    data = json.loads(raw.data)
    if not isinstance(data, dict):
        raise kube.KubeError("unexpected list answer: not an object")
    return data


def _parse(
    items: list[dict[str, Any]], parse: Callable[[dict[str, Any]], Any], log: StructLogger
) -> list[Any]:
    out = []
    for obj in items:
        try:
            out.append(parse(obj))
        except api.InvalidObject as exc:
            log.warning("ignoring malformed object", error=str(exc))
    return out
