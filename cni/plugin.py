"""The CNI commands: ADD, DEL, CHECK, STATUS, GC (VERSION is answered in cni.main).

Each takes the validated configuration and environment and returns the object
to print (or None), or raises :class:`~cni.errors.CNIError`.

- ADD: bridge MTU, the pod's VM and its network record (waiting for IPAM),
  the veth pair with the container end configured, the port's nftables rules,
  then, last, the host end onto the bridge: no frame crosses the bridge before
  the rules are in place. Every step that creates something registers its
  undo; a failure unwinds them. A repeated ADD finds everything in place and
  returns the same result.
- DEL: local only (no API call), best effort: remove the host end (the
  container end goes with it), then the rules; gathers errors; what is already
  gone is success. The VM's address is the VM's: nothing to release.
- CHECK: compares the kernel with ``prevResult`` and reports every difference.
- STATUS: error 50 when the bridge does not exist.
- GC: removes host ends and rules of this network's attachments that are not
  in ``cni.dev/valid-attachments``, and rules whose port no longer exists.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from cni import antispoof, errors, link, result
from cni.config import Env, NetConf
from cni.errors import CNIError
from vmoverlay import identity
from vmoverlay.logs import get_logger

if TYPE_CHECKING:
    from cni import vm

log = get_logger("cni")


def run(conf: NetConf, env: Env) -> dict[str, Any] | None:
    commands = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check}
    if env.command in commands:
        return commands[env.command](conf, env)
    if env.command == "STATUS":
        cmd_status(conf)
        return None
    if env.command == "GC":
        cmd_gc(conf)
        return None
    raise CNIError(errors.INVALID_ENV, f"unknown CNI_COMMAND {env.command!r}")


def cmd_add(conf: NetConf, env: Env) -> dict[str, Any]:
    bridge_mtu = link.bridge_mtu(conf.bridge)
    mtu = _mtu(conf, bridge_mtu)
    link.check_netns(env.netns)
    if not env.pod_namespace or not env.pod_name:
        raise CNIError(
            errors.INVALID_ENV,
            "CNI_ARGS lacks K8S_POD_NAMESPACE or K8S_POD_NAME",
            "ADD needs the pod to find the VM it runs",
        )
    # Only ADD talks to the API: DEL, CHECK and GC do not pay for the client's import.
    from cni import vm

    target = vm.find_target(
        kubeconfig=conf.kubeconfig,
        namespace=env.pod_namespace,
        pod_name=env.pod_name,
        timeout=conf.timeout,
    )
    spec = port_spec(conf, env, target, mtu)
    policy = antispoof.PortPolicy(
        port=spec.host_name,
        mac=target.network.mac,
        ips=(ipaddress.ip_address(target.network.ip),),
        anti_spoof=conf.anti_spoof,
        gate=conf.mode == "vm-l2" and target.pod.migration_target,
    )
    port = _plug(spec, bridge_mtu, policy)
    log.info(
        "attachment ready",
        vm=f"{target.vm.namespace}/{target.vm.name}",
        pod=f"{env.pod_namespace}/{env.pod_name}",
        port=port.host_name,
        mode=conf.mode,
        mac=port.mac,
        ip=target.network.ip,
        mtu=mtu,
        created=port.created,
        gated=policy.gate,
    )
    return _result(conf.cni_version, spec, port)


def _result(version: str, spec: link.PortSpec, port: link.Port) -> dict[str, Any]:
    attached = result.Attached(
        host_name=port.host_name,
        host_mac=port.host_mac,
        ifname=spec.ifname,
        mac=port.mac,
        mtu=port.mtu,
        sandbox=spec.netns,
        addresses=spec.addresses,
        gateway=spec.gateway,
        default_route=spec.default_route,
    )
    return result.build(version, attached)


def port_spec(conf: NetConf, env: Env, target: vm.Target, mtu: int) -> link.PortSpec:
    """The interface ADD wants: the VM's MAC and IP (pod), or a silent L2 port (vm-l2)."""
    net = target.network
    if conf.mode == "vm-l2":
        # The guest carries the VM's MAC and IP; the port has its own MAC, stable per
        # pod, so nothing the runner pod itself sends ever claims the VM's MAC.
        seed = target.pod.uid or env.pod_uid or env.container_id
        mac = identity.mac_from_uid(seed, prefix=identity.PORT_MAC_PREFIX)
        addresses: tuple[link.IPInterface, ...] = ()
        gateway = None
    else:
        mac = net.mac
        addresses = (ipaddress.ip_interface(f"{net.ip}/{net.prefix}"),)
        gateway = ipaddress.ip_address(net.gateway) if net.gateway else None
    return link.PortSpec(
        network=conf.name,
        container_id=env.container_id,
        ifname=env.ifname,
        netns=env.netns,
        bridge=conf.bridge,
        mac=mac,
        mtu=mtu,
        addresses=addresses,
        gateway=gateway,
        default_route=conf.default_route and gateway is not None,
    )


def _plug(spec: link.PortSpec, bridge_mtu: int, policy: antispoof.PortPolicy) -> link.Port:
    rollback = link.Rollback()
    done = False
    try:
        port = link.ensure_port(spec, bridge_mtu, rollback)
        if antispoof.needs_chain(policy):
            antispoof.ensure_port(policy, reset_gate=port.created)
            if port.created:
                rollback.push(
                    f"remove rules of {spec.host_name}",
                    lambda: antispoof.remove_port(spec.host_name),
                )
        else:
            antispoof.remove_port(spec.host_name)
        link.attach_to_bridge(spec.host_name, spec.bridge)
        done = True
        return port
    finally:
        if not done:
            left = rollback.run()
            if left:
                log.error("rollback incomplete", port=spec.host_name, left="; ".join(left))


def _mtu(conf: NetConf, bridge_mtu: int) -> int:
    if conf.mtu is None:
        return bridge_mtu
    if conf.mtu > bridge_mtu:
        raise CNIError(
            errors.INVALID_CONFIG,
            f"invalid network configuration: mtu {conf.mtu} exceeds bridge {conf.bridge}'s "
            f"MTU {bridge_mtu}",
            "leave mtu out to use the bridge's",
        )
    return conf.mtu


def cmd_del(conf: NetConf, env: Env) -> None:
    host_name = link.host_port_name(env.container_id, env.ifname)
    problems = []
    # The link first: once it is gone nothing can cross the bridge unfiltered.
    try:
        existed = link.remove_port(host_name)
    except CNIError as exc:
        problems.append(str(exc))
        existed = None
    try:
        antispoof.remove_port(host_name)
    except CNIError as exc:
        problems.append(str(exc))
    if problems:
        raise CNIError(
            errors.CLEANUP_INCOMPLETE,
            f"failed to remove attachment {env.container_id}/{env.ifname} completely",
            "; ".join(problems),
        )
    log.info("attachment removed", port=host_name, container=env.container_id, existed=existed)


def cmd_check(conf: NetConf, env: Env) -> None:
    if conf.prev_result is None:
        raise CNIError(
            errors.INVALID_CONFIG, "invalid network configuration: CHECK needs prevResult"
        )
    expected = result.expected_from(conf.prev_result, env.ifname)
    mtu = expected.mtu or conf.mtu or link.bridge_mtu(conf.bridge)
    host_name = link.host_port_name(env.container_id, env.ifname)
    want = link.PortWant(
        ifname=env.ifname,
        mac=expected.mac,
        mtu=mtu,
        addresses=expected.addresses,
        gateway=expected.gateway,
    )
    have = link.inspect_port(host_name, env.ifname, env.netns)
    problems = link.port_drift(want, have, bridge=conf.bridge, host_name=host_name)
    if conf.anti_spoof:
        policy = antispoof.PortPolicy(port=host_name, mac=expected.mac, ips=())
        problems += antispoof.port_problems(policy)
    if problems:
        raise CNIError(
            errors.DRIFT,
            f"attachment {env.container_id}/{env.ifname} drifted: {problems[0]}",
            "; ".join(problems),
        )


def cmd_status(conf: NetConf) -> None:
    if not link.bridge_exists(conf.bridge):
        raise CNIError(
            errors.PLUGIN_NOT_AVAILABLE,
            f"plugin not available: bridge {conf.bridge} does not exist on this node",
            "the vxlan-manager agent creates it: is it running on this node?",
        )


def cmd_gc(conf: NetConf) -> None:
    if conf.valid_attachments is None:
        raise CNIError(
            errors.INVALID_CONFIG,
            "invalid network configuration: GC needs cni.dev/valid-attachments",
        )
    valid = {link.host_port_name(a.container_id, a.ifname) for a in conf.valid_attachments}
    problems = []
    removed = []
    for port in link.list_ports():
        if port.network != conf.name or port.host_name in valid:
            continue
        try:
            link.remove_port(port.host_name)
            antispoof.remove_port(port.host_name)
            removed.append(port.host_name)
        except CNIError as exc:
            problems.append(str(exc))
    state = antispoof.table_state()
    live = {port.host_name for port in link.list_ports()}
    for name in sorted(state.ports if state else ()):
        if name in live or name in valid:
            continue
        try:
            antispoof.remove_port(name)
            removed.append(name)
        except CNIError as exc:
            problems.append(str(exc))
    log.info("garbage collected", network=conf.name, removed=",".join(removed) or "-")
    if problems:
        raise CNIError(
            errors.CLEANUP_INCOMPLETE, "GC could not remove everything", "; ".join(problems)
        )
