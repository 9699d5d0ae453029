"""``vmoverlay-lab``: one command for the lab and everything it runs.

Each sub-command lives in its own module and is imported only when used, so a
missing optional tool (QEMU, iperf3) never breaks the others. Every module
exposes ``main(argv: list[str]) -> int``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "apiserver": ("e2e.apiserver.main", "run the lab's Kubernetes API server"),
    "gate": ("e2e.lab.gate", "the migration-resilience gate: pgbench through live migrations"),
    "up": ("e2e.lab.up", "bring a lab cluster up and keep it running"),
    "down": ("e2e.lab.down", "remove the leftovers of lab runs whose process is gone"),
    "status": ("e2e.lab.status", "show running labs and how to enter their namespaces"),
    "check": ("e2e.lab.check", "fabric health check of a running lab"),
    "fault": ("e2e.lab.fault", "inject a fault into a running lab"),
    "bench": ("e2e.lab.bench", "lab benchmarks (overlay throughput...)"),
}


def usage() -> str:
    lines = ["usage: vmoverlay-lab COMMAND [options]   (COMMAND --help for its options)", ""]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"vmoverlay-lab: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(
                f"vmoverlay-lab: '{name}' is not built yet in this checkout "
                f"(module {module_name} is missing).",
                file=sys.stderr,
            )
            return 2
        raise
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
