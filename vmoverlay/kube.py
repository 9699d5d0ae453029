"""Kubernetes client set-up and the project's own API errors.

Every component talks to Kubernetes through the official client. This module
loads its configuration (explicit kubeconfig, ``KUBECONFIG``, or in-cluster) and
turns :class:`kubernetes.client.ApiException` into a small hierarchy, so no
caller compares HTTP status codes::

    try:
        objs.create_allocation(body)
    except AlreadyExists:
        ...  # another allocator holds this address; try the next one

``retry`` runs a call with capped exponential back-off and logs every attempt
with its number, limit and target.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from vmoverlay import __version__, api
from vmoverlay.logs import StructLogger

T = TypeVar("T")


class KubeError(Exception):
    """An error from the Kubernetes API, with its HTTP status and reason."""

    status: int = 0

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status or self.status
        self.reason = reason


class NotFound(KubeError):
    status = 404


class Conflict(KubeError):
    """409 with reason Conflict: the object changed since it was read."""

    status = 409


class AlreadyExists(KubeError):
    """409 with reason AlreadyExists: create of a name that is taken."""

    status = 409


class Gone(KubeError):
    """410: a watch or list asked for a resourceVersion that is too old."""

    status = 410


class Invalid(KubeError):
    """422: the object fails validation. Retrying will not help."""

    status = 422


class Forbidden(KubeError):
    status = 403


class Unavailable(KubeError):
    """The API server could not be reached, timed out, or answered 5xx/429."""


def translate(exc: ApiException) -> KubeError:
    """Map an :class:`ApiException` to the project's error types."""
    reason, message = "", str(exc.reason or "")
    try:
        body = json.loads(exc.body or "{}")
        reason = str(body.get("reason") or "")
        message = str(body.get("message") or message)
    except (ValueError, TypeError, AttributeError):
        message = f"{message} {exc.body!r}" if exc.body else message
    status = int(exc.status or 0)
    kind: type[KubeError]
    if status == 404:
        kind = NotFound
    elif status == 409:
        kind = AlreadyExists if reason == "AlreadyExists" else Conflict
    elif status == 410:
        kind = Gone
    elif status == 422:
        kind = Invalid
    elif status == 403:
        kind = Forbidden
    elif status == 0 or status >= 500 or status == 429:
        kind = Unavailable
    else:
        kind = KubeError
    return kind(f"{status} {reason or 'Error'}: {message}", status=status, reason=reason)


@contextmanager
def api_errors() -> Iterator[None]:
    """Translate client exceptions raised inside the block."""
    try:
        yield
    except ApiException as exc:
        raise translate(exc) from exc
    except (Urllib3HTTPError, OSError) as exc:
        raise Unavailable(f"Kubernetes API unreachable: {exc}") from exc


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a client method, translating its errors."""
    with api_errors():
        return fn(*args, **kwargs)


def load_client(kubeconfig: str | None = None, *, user_agent: str | None = None) -> k8s.ApiClient:
    """An ApiClient from ``kubeconfig``, else ``$KUBECONFIG``, else in-cluster config.

    Requests carry ``user_agent``, by default :func:`default_user_agent`, so API
    server logs (and the lab server's audit, which the RBAC test reads) tell the
    components apart. Raises :class:`KubeError` with what to do when no
    configuration is usable.
    """
    path = kubeconfig or os.environ.get("KUBECONFIG")
    configuration = k8s.Configuration()
    try:
        if path:
            _check_kubeconfig_file(path)
            try:
                k8s_config.load_kube_config(config_file=path, client_configuration=configuration)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                raise KubeError(
                    f"kubeconfig {path} is not a usable kubeconfig ({type(exc).__name__}: {exc}); "
                    "check its clusters, users and current-context"
                ) from exc
        else:
            k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException as exc:
        raise KubeError(
            f"no Kubernetes configuration: {exc}; pass --kubeconfig, set KUBECONFIG, "
            "or run inside a cluster with a service account"
        ) from exc
    # Fail fast instead of hanging on a dead API server; callers retry.
    configuration.retries = 0
    client = k8s.ApiClient(configuration)
    client.user_agent = user_agent or default_user_agent()
    return client


def _check_kubeconfig_file(path: str) -> None:
    """Refuse, with what to do, a kubeconfig path that is missing, unreadable or not YAML."""
    hint = "pass --kubeconfig or set KUBECONFIG to a kubeconfig file"
    if not os.path.exists(path):
        raise KubeError(f"kubeconfig {path} does not exist: {hint}")
    if os.path.isdir(path):
        raise KubeError(f"kubeconfig {path} is a directory: {hint}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise KubeError(f"failed to read kubeconfig {path}: {exc.strerror}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise KubeError(f"kubeconfig {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("clusters"), list):
        raise KubeError(f"kubeconfig {path} has no list of clusters: is it a kubeconfig? {hint}")


def default_user_agent() -> str:
    """``vmoverlay/<program> <version>``, the program being the running command's name.

    ``vxlan-manager``, ``ipam-controller`` and ``vmoverlay-cni`` so identify
    themselves with no code of their own.
    """
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return f"vmoverlay/{program or 'python'} {__version__}"


def to_dict(client: k8s.ApiClient, obj: Any) -> dict[str, Any]:
    """A typed client model (V1Node, V1Pod...) as the plain dict the API sent."""
    if isinstance(obj, dict):
        return obj
    result: dict[str, Any] = client.sanitize_for_serialization(obj)
    return result


def backoff_delays(
    *, base: float = 0.1, cap: float = 5.0, attempts: int | None = None
) -> Iterator[float]:
    """Capped exponential back-off with full jitter: 0.1, 0.2, 0.4... up to ``cap``."""
    n = 0
    while attempts is None or n < attempts:
        yield random.uniform(base / 2, min(cap, base * (2**n)))
        n += 1


def retry(
    fn: Callable[[], T],
    *,
    what: str,
    log: StructLogger,
    attempts: int = 5,
    base: float = 0.1,
    cap: float = 5.0,
    retry_on: tuple[type[BaseException], ...] = (Unavailable,),
) -> T:
    """Run ``fn`` until it succeeds or ``attempts`` are used; log each retry."""
    delays = backoff_delays(base=base, cap=cap)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except retry_on as exc:
            if attempt == attempts:
                raise
            delay = next(delays)
            log.warning(
                f"{what} failed, will retry",
                attempt=f"{attempt}/{attempts}",
                retry_in=f"{delay:.2f}s",
                error=str(exc),
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _dict(obj: object) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise KubeError(f"unexpected API answer {type(obj).__name__}, wanted an object")
    return obj


class CustomObjects:
    """The project's custom resources through ``CustomObjectsApi``, errors translated.

    ``namespace=None`` addresses a cluster-scoped resource (or all namespaces for list).
    """

    def __init__(self, client: k8s.ApiClient) -> None:
        self.api = k8s.CustomObjectsApi(client)

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        g, v = api.GROUP, api.VERSION
        with api_errors():
            if namespace is None:
                return _dict(self.api.get_cluster_custom_object(g, v, plural, name))
            return _dict(self.api.get_namespaced_custom_object(g, v, namespace, plural, name))

    def list(self, plural: str, namespace: str | None = None, **kwargs: Any) -> dict[str, Any]:
        g, v = api.GROUP, api.VERSION
        with api_errors():
            if namespace is None:
                return _dict(self.api.list_cluster_custom_object(g, v, plural, **kwargs))
            return _dict(self.api.list_namespaced_custom_object(g, v, namespace, plural, **kwargs))

    def create(
        self, plural: str, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        g, v = api.GROUP, api.VERSION
        with api_errors():
            if namespace is None:
                return _dict(self.api.create_cluster_custom_object(g, v, plural, body))
            return _dict(self.api.create_namespaced_custom_object(g, v, namespace, plural, body))

    def replace_status(
        self, plural: str, name: str, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        """PUT to /status; ``body.metadata.resourceVersion`` guards against lost updates."""
        g, v = api.GROUP, api.VERSION
        with api_errors():
            if namespace is None:
                return _dict(
                    self.api.replace_cluster_custom_object_status(g, v, plural, name, body)
                )
            return _dict(
                self.api.replace_namespaced_custom_object_status(
                    g, v, namespace, plural, name, body
                )
            )

    def delete(
        self, plural: str, name: str, namespace: str | None = None, *, uid: str | None = None
    ) -> None:
        """Delete; with ``uid`` only if the object is still that very object."""
        g, v = api.GROUP, api.VERSION
        body = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=uid)) if uid else None
        with api_errors():
            if namespace is None:
                self.api.delete_cluster_custom_object(g, v, plural, name, body=body)
            else:
                self.api.delete_namespaced_custom_object(g, v, namespace, plural, name, body=body)
