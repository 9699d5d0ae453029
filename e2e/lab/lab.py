"""The lab cluster: topology, control plane, nodes, VMs, client, and live migration.

Topology (every namespace from :class:`e2e.netns.RunNamespaces`, named
``vmo-<run id>-<role>``)::

    fabric   bridge sw0: the underlay switch; one veth port per host below
    cp       198.18.0.1/24   lab API server + IPAM controller
    n1..nN   198.18.0.11../24 node agent (vmo-vx0 + vmo-br0); CNI runs here
    vm<i>    the guest (eth0: VM MAC + IP)   vm<i>q  its QEMU side (br0, uplinks)
    r<i>-<k>-<node>  runner pod k of VM i on that node (net1 from CNI vm-l2)
    cl       the client pod on the last node (eth0 from CNI pod mode)

Every underlay veth is created inside the fabric namespace with its peer
placed straight into the host's namespace; nothing is created in the root
namespace and no namespace has a default route.

A migration (:meth:`Lab.prepare_migration`, :meth:`Lab.switch_over`,
:meth:`Lab.finish_migration`) follows a real live migration:

1. prepare: VirtualMachineMigration created (Scheduling), target runner pod
   recorded and plugged by CNI ADD (vm-l2) on the target node, a new uplink
   from the VM's QEMU side to it, still down (Running);
2. switch-over, the pause window: SIGSTOP every process of the guest, old
   uplink down; the VM's ``status.node`` is written to the target at the
   *start* of the window, so the agents move their FDB entries while the VM
   is paused anyway; after the pause the new uplink goes up and the guest
   gets SIGCONT, then QEMU-style RARP rounds (unless disabled);
3. finish: migration Succeeded with its timestamps; the old uplink removed,
   CNI DEL for the source runner pod, the pod deleted.

With ``binding="pod-network"`` the switch-over also gives the guest a new
address (taken from the IPAM controller for a fresh record, as a pod network
gives a new pod a new IP): the failing control.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from e2e.lab import components
from e2e.lab import vm as vmmod
from e2e.lab.announce import Announcer, packet_socket
from e2e.lab.cluster import LAB_NAMESPACE, ClusterAPI, now_rfc3339
from e2e.lab.cni import MODE_POD, MODE_VM_L2, CNIError, PodAttachment, invoke
from e2e.lab.components import Component
from e2e.lab.limits import NODE_OFFSET
from e2e.lab.linkctl import LinkControl, link_index
from e2e.lab.vm import LabVM
from e2e.netns import NetnsError, RunNamespaces, list_namespaces, remove_namespace
from vmoverlay import api
from vmoverlay.api import VMNetwork
from vmoverlay.kube import KubeError
from vmoverlay.logs import get_logger

UNDERLAY = "198.18.0.0/24"
UNDERLAY_PREFIX = 24
CP_ADDRESS = "198.18.0.1"
OVERLAY_POOL = "198.19.0.0/16"
POOL_NAME = "lab"
UNDERLAY_MTU = 1500
OVERLAY_MTU = UNDERLAY_MTU - 50
BINDINGS = ("overlay", "pod-network")
log = get_logger("lab")

Progress = Callable[[str], None]


class LabError(RuntimeError):
    pass


def node_address(index: int) -> str:
    """Underlay address of node ``index`` (1-based): 198.18.0.11, .12, ..."""
    return f"198.18.0.{NODE_OFFSET + index}"


def node_names(count: int) -> list[str]:
    return [f"n{i}" for i in range(1, count + 1)]


def initial_placement(vms: int, nodes: list[str]) -> list[str]:
    """VM i starts on the i-th node, skipping the last node (the client's) when it can."""
    hosts = nodes[:-1] if len(nodes) > 1 else nodes
    return [hosts[i % len(hosts)] for i in range(vms)]


@dataclass
class LabConfig:
    nodes: int = 3
    vms: int = 2
    pause_ms: int = 100
    announce: bool = True
    binding: str = "overlay"
    bound_ms: int = 10000
    log_dir: Path | None = None


@dataclass
class Runner:
    """One runner pod of a VM: the Kubernetes pod, its namespace and its CNI attachment."""

    pod: str
    node: str
    attachment: PodAttachment
    uplink: str


@dataclass
class Prepared:
    index: int
    vm: LabVM
    migration: str
    source: str
    target: str
    runner: Runner
    new_network: VMNetwork | None
    prepare_s: float


@dataclass
class SwitchTimes:
    freeze: float
    resume: float
    status_written: float
    frozen_pids: int
    freeze_wall: str

    @property
    def pause_s(self) -> float:
        return self.resume - self.freeze


@dataclass
class Lab:
    config: LabConfig
    run: RunNamespaces
    progress: Progress = field(default=lambda _msg: None)
    node_ns: dict[str, str] = field(default_factory=dict)
    vms: dict[str, LabVM] = field(default_factory=dict)
    runners: dict[str, Runner] = field(default_factory=dict)
    announcers: dict[str, Announcer] = field(default_factory=dict)
    links: dict[str, LinkControl] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    agents: dict[str, Component] = field(default_factory=dict)
    cni_add_seconds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nodes = node_names(self.config.nodes)
        self.fabric = ""
        self.cp = ""
        self.client_ns = ""
        self.client_ip = ""
        self.client_node = self.nodes[-1]
        self.api: ClusterAPI | None = None
        self.apiserver: Component | None = None
        self.ipam: Component | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix=f"vmo-{self.run.run_id}-lab-"))
        self.log_dir = self.config.log_dir or (self._tmp / "logs")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = self._tmp / "kubeconfig"
        self._counter = itertools.count(1)
        self._cleanup = concurrent.futures.ThreadPoolExecutor(max_workers=2)
        self._pending: list[concurrent.futures.Future[None]] = []

    # --- bring-up ---------------------------------------------------------------------

    def start(self) -> None:
        self.progress(
            f"run {self.run.run_id}: building the topology: fabric, control plane, "
            f"{len(self.nodes)} nodes"
        )
        self._topology()
        self.progress("starting the lab API server and the IPAM controller")
        self._control_plane()
        self.progress(f"starting {len(self.nodes)} node agents (vxlan-manager)")
        self._agents()
        for i, node in enumerate(initial_placement(self.config.vms, self.nodes), start=1):
            self.progress(f"starting VM vm{i} on {node}: CNI vm-l2, Postgres 15")
            self._start_vm(f"vm{i}", node)
        self.progress(f"plugging the client pod on {self.client_node} (CNI pod mode)")
        self._client()

    @property
    def cluster(self) -> ClusterAPI:
        if self.api is None:
            raise LabError("the lab's API server is not up")
        return self.api

    def _topology(self) -> None:
        run = self.run
        self.fabric = run.add("fabric")
        vmmod.disable_ipv6(run, self.fabric)
        run.check(self.fabric, ["ip", "link", "add", "sw0", "type", "bridge"])
        run.check(self.fabric, ["ip", "link", "set", "sw0", "up"])
        self.cp = run.add("cp")
        self._underlay_port(self.cp, "cp", CP_ADDRESS)
        for i, node in enumerate(self.nodes, start=1):
            ns = run.add(node)
            self.node_ns[node] = ns
            self._underlay_port(ns, node, node_address(i))

    def _underlay_port(self, ns: str, role: str, address: str) -> None:
        """A veth made in the fabric namespace, its peer moved straight into ``ns`` as eth0."""
        port = f"p-{role}"
        self.run.check(
            self.fabric,
            ["ip", "link", "add", port, "mtu", str(UNDERLAY_MTU), "type", "veth", "peer"]
            + ["name", "eth0", "mtu", str(UNDERLAY_MTU), "netns", ns],
        )
        self.run.check(self.fabric, ["ip", "link", "set", port, "master", "sw0", "up"])
        self.run.check(ns, ["ip", "addr", "add", f"{address}/{UNDERLAY_PREFIX}", "dev", "eth0"])
        self.run.check(ns, ["ip", "link", "set", "eth0", "up"])

    def _control_plane(self) -> None:
        self.apiserver = components.apiserver(self.cp, CP_ADDRESS, self.log_dir, self.kubeconfig)
        self.apiserver.start(self.run)
        components.wait_apiserver(self.apiserver, self.kubeconfig)
        self.api = ClusterAPI(str(self.kubeconfig), self.cp)
        self.api.wait_ready()
        self.api.apply_crds()
        self.api.ensure_namespace(LAB_NAMESPACE)
        self.api.create_pool(POOL_NAME, OVERLAY_POOL, mtu=OVERLAY_MTU)
        for i, node in enumerate(self.nodes, start=1):
            self.api.record_node(node, node_address(i))
        self.ipam = components.ipam(self.cp, self.kubeconfig, self.log_dir, UNDERLAY)
        self.ipam.start(self.run)

    def _agents(self) -> None:
        for i, node in enumerate(self.nodes, start=1):
            self.start_agent(node, address=node_address(i))
        for node in self.nodes:
            self.wait_agent(node)

    def start_agent(self, node: str, *, address: str | None = None) -> None:
        address = address or node_address(self.nodes.index(node) + 1)
        agent = components.agent(
            self.node_ns[node],
            node,
            self.kubeconfig,
            self.log_dir,
            address=address,
            state_dir=self._tmp / f"agent-{node}",
        )
        agent.start(self.run)
        self.agents[node] = agent

    def kill_agent(self, node: str) -> None:
        """SIGKILL the agent on ``node`` (a fault): its data plane stays as it was."""
        self.agents[node].kill()

    def restart_ipam(self) -> None:
        """Stop the IPAM controller (SIGTERM) and start a new one, as a rolling update would."""
        if self.ipam is not None:
            self.ipam.stop()
            self.ipam.start(self.run)

    def vm_networks(self) -> dict[str, VMNetwork | None]:
        """Each VM's ``status.network`` as the API has it now."""
        return {name: self.cluster.get_vm(name).network for name in self.vms}

    def wait_agent(self, node: str, timeout: float = 60.0) -> None:
        """Wait until the agent on ``node`` built its VXLAN device and bridge."""
        ns, agent = self.node_ns[node], self.agents[node]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not agent.alive():
                raise LabError(f"the agent on {node} exited: {agent.log_tail()}")
            links = self.run.run(ns, ["ip", "-br", "link"]).stdout
            if "vmo-vx0" in links and "vmo-br0" in links:
                return
            time.sleep(0.2)
        raise LabError(f"the agent on {node} built no vmo-vx0/vmo-br0 within {timeout:.0f}s")

    def _attach(self, *, node: str, pod_ns: str, pod: str, ifname: str, mode: str) -> Runner:
        att = PodAttachment(
            node_ns=self.node_ns[node],
            pod_ns=pod_ns,
            k8s_namespace=LAB_NAMESPACE,
            pod_name=pod,
            container_id=f"{self.run.run_id}-{pod}",
            ifname=ifname,
            mode=mode,
        )
        _, took = invoke("ADD", att, kubeconfig=self.kubeconfig, log_file=self.log_dir / "cni.log")
        self.cni_add_seconds.append(took)
        return Runner(pod=pod, node=node, attachment=att, uplink="")

    def _new_runner(self, vm: str, node: str, index: int, network: VMNetwork) -> Runner:
        """Runner pod ``index`` of ``vm`` on ``node``: recorded, namespace made, CNI ADD done."""
        pod = f"{vm}-runner-{index}"
        self.cluster.create_runner_pod(pod, vm=vm, node=node)
        pod_ns = self.run.add(f"r{vm[2:]}-{index}-{node}")
        runner = self._attach(node=node, pod_ns=pod_ns, pod=pod, ifname="net1", mode=MODE_VM_L2)
        vmmod.build_runner_bridge(self.run, pod_ns, network.mtu)
        runner.uplink = f"up{index}"
        return runner

    def _start_vm(self, name: str, node: str) -> None:
        api_ = self.cluster
        api_.create_vm(name)
        network = api_.wait_vm_network(name)
        api_.set_vm_status(name, node=node, phase="Scheduled")
        index = next(self._counter)
        runner = self._new_runner(name, node, index, network)
        ns, qns = self.run.add(name), self.run.add(f"{name}q")
        vmmod.build_guest(self.run, ns, qns, network)
        vmmod.make_uplink(
            self.run, qns, runner.attachment.pod_ns, runner.uplink, network.mtu, attach=True
        )
        datadir = vmmod.init_postgres(self.run.run_id, name, OVERLAY_POOL)
        vm = LabVM(name, ns, qns, network, node, runner.attachment.pod_ns, runner.uplink, datadir)
        self.vms[name] = vm
        self.runners[name] = runner
        vm.procs.append(vmmod.start_postgres(self.run, vm))
        vm.procs.append(vmmod.start_echo(self.run, vm))
        self.announcers[name] = Announcer(packet_socket(ns, "eth0"), network.mac)
        self.links[name] = LinkControl(qns)
        vmmod.wait_postgres(self.run, vm)
        api_.set_vm_status(name, node=node, phase=api.PHASE_RUNNING)

    def _client(self) -> None:
        api_ = self.cluster
        api_.create_vm("client")
        network = api_.wait_vm_network("client")
        api_.set_vm_status("client", node=self.client_node, phase="Scheduled")
        api_.create_runner_pod("client", vm="client", node=self.client_node)
        self.client_ns = self.run.add("cl")
        vmmod.disable_ipv6(self.run, self.client_ns)
        self._attach(
            node=self.client_node, pod_ns=self.client_ns, pod="client", ifname="eth0", mode=MODE_POD
        )
        self.client_ip = network.ip
        api_.set_vm_status("client", node=self.client_node, phase=api.PHASE_RUNNING)

    # --- migration ----------------------------------------------------------------------

    def prepare_migration(self, vm_name: str, target: str) -> Prepared:
        started = time.monotonic()
        vm = self.vms[vm_name]
        index = next(self._counter)
        migration = f"{vm_name}-mig-{index}"
        self.cluster.create_migration(migration, vm=vm_name, target=target, source=vm.node)
        runner = self._new_runner(vm_name, target, index, vm.network)
        vmmod.make_uplink(
            self.run, vm.qns, runner.attachment.pod_ns, runner.uplink, vm.network.mtu, attach=False
        )
        new_network = None
        if self.config.binding == "pod-network":
            record = f"{vm_name}-pod-{index}"
            self.cluster.create_vm(record)
            new_network = self.cluster.wait_vm_network(record)
        self.cluster.set_migration_status(migration, phase="Running")
        return Prepared(
            index=index,
            vm=vm,
            migration=migration,
            source=vm.node,
            target=target,
            runner=runner,
            new_network=new_network,
            prepare_s=time.monotonic() - started,
        )

    def switch_over(self, prep: Prepared) -> SwitchTimes:
        """The pause window: cut and freeze, wait, join the new uplink and resume.

        status.node is written at the window's start, so the agents move their FDB
        entries while the VM is paused anyway. The uplinks move by one netlink
        message each (:mod:`e2e.lab.linkctl`), so the window is exact to well under
        a millisecond; the guest's own eth0 keeps carrier throughout.
        """
        vm, pause = prep.vm, self.config.pause_ms / 1000.0
        links = self.links[vm.name]
        old_index = link_index(vm.qns, vm.uplink)
        new_index = link_index(vm.qns, prep.runner.uplink)
        bridge = link_index(vm.qns, "br0")
        written: list[float] = []
        t_freeze, freeze_wall = time.monotonic(), now_rfc3339()
        status = self.cluster.set_vm_status_async(
            vm.name, node=prep.target, phase=api.PHASE_RUNNING
        )
        status.add_done_callback(lambda _f: written.append(time.monotonic()))
        links.set_master(old_index, 0)
        pids = vmmod.freeze(vm.ns)
        try:
            if prep.new_network is not None:
                self._readdress(vm, prep.new_network)
            time.sleep(max(0.0, t_freeze + pause - time.monotonic()))
            links.set_master(new_index, bridge)
            links.set_learning(new_index, False)
        finally:
            vmmod.thaw(pids)
        t_resume = time.monotonic()
        if self.config.announce:
            self.announcers[vm.name].start()
        status.result()
        t_status = written[0] if written else time.monotonic()
        vm.node, vm.uplink, vm.runner_ns = (
            prep.target,
            prep.runner.uplink,
            prep.runner.attachment.pod_ns,
        )
        return SwitchTimes(t_freeze, t_resume, t_status, len(pids), freeze_wall)

    def _readdress(self, vm: LabVM, network: VMNetwork) -> None:
        """pod-network binding: the guest comes back with another address (the control)."""
        self.run.check(vm.ns, ["ip", "addr", "flush", "dev", "eth0"])
        self.run.check(
            vm.ns, ["ip", "addr", "add", f"{network.ip}/{network.prefix}", "dev", "eth0"]
        )
        self.addresses[vm.name] = network.ip

    def address(self, vm: str) -> str:
        """The address the guest has now: its record's, unless the control re-addressed it."""
        return self.addresses.get(vm, self.vms[vm].ip)

    def finish_migration(
        self, prep: Prepared, times: SwitchTimes
    ) -> concurrent.futures.Future[None]:
        """Record the outcome now; remove the source runner pod in the background."""
        self.cluster.set_migration_status(
            prep.migration,
            phase="Succeeded",
            switchoverTime=now_rfc3339(),
            completionTime=now_rfc3339(),
        )
        old = self.runners[prep.vm.name]
        self.runners[prep.vm.name] = prep.runner
        future = self._cleanup.submit(self._remove_runner, prep.vm, old)
        self._pending.append(future)
        return future

    def wait_cleanups(self, errors: list[str]) -> None:
        """Wait for the source runners' removal; each failure becomes a line in ``errors``."""
        for future in self._pending:
            try:
                future.result(timeout=60)
            except (LabError, CNIError, vmmod.VMError, NetnsError, KubeError, OSError) as exc:
                errors.append(f"failed to remove a source runner pod: {exc}")
            except concurrent.futures.TimeoutError:
                errors.append("removing a source runner pod took over 60 s")
        self._pending.clear()

    def _remove_runner(self, vm: LabVM, runner: Runner) -> None:
        vmmod.link_batch(vm.qns, [f"link del {runner.uplink}"])
        invoke(
            "DEL", runner.attachment, kubeconfig=self.kubeconfig, log_file=self.log_dir / "cni.log"
        )
        self.cluster.delete_pod(runner.pod)
        remove_namespace(runner.attachment.pod_ns)

    # --- tear-down ----------------------------------------------------------------------

    def close(self, *, keep_logs: bool = False) -> Path | None:
        """Stop everything this lab started; the caller's RunNamespaces removes the namespaces.

        Returns where the lab's logs can be read now, None when none are left.
        """
        self._cleanup.shutdown(wait=True, cancel_futures=True)
        existing = set(list_namespaces())
        for vm in self.vms.values():
            # A VM left frozen by an interrupted switch-over must be able to die.
            if vm.ns in existing:
                vmmod.thaw(vmmod.pids_in_netns(vm.ns))
        vmmod.stop_processes(list(self.vms.values()))
        for announcer in self.announcers.values():
            announcer.close()
        for links in self.links.values():
            links.close()
        running = [c for c in [*self.agents.values(), self.ipam, self.apiserver] if c is not None]
        for component in running:  # all at once, then wait for each
            component.terminate()
        for component in running:
            component.stop()
        if self.api is not None:
            self.api.close()
        for vm in self.vms.values():
            vmmod.remove_datadir(vm)
        return self._remove_tmp(keep_logs=keep_logs)

    def _remove_tmp(self, *, keep_logs: bool) -> Path | None:
        """The lab's temp dir goes; only the logs stay, when asked and kept in it.

        Returns where the logs are now: the ``--log-dir`` if it holds any, the
        kept temp logs, or None when there are none (an empty log dir is never
        kept nor pointed at).
        """
        if self.config.log_dir is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return self.config.log_dir if has_files(self.config.log_dir) else None
        if not keep_logs or not has_files(self.log_dir):
            shutil.rmtree(self._tmp, ignore_errors=True)
            return None
        for path in self._tmp.iterdir():
            if path != self.log_dir:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        return self.log_dir


def has_files(directory: Path) -> bool:
    """Whether ``directory`` holds at least one non-empty file (at any depth)."""
    try:
        return any(p.is_file() and p.stat().st_size > 0 for p in directory.rglob("*"))
    except OSError:
        return False
