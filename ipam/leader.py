"""Leader election through a ``coordination.k8s.io/v1`` Lease.

One replica holds the Lease and serves; the others stand by and take over
when the holder stops renewing it for ``lease_seconds``. The rules are the
ones client-go's elector follows:

- acquire when the Lease does not exist, is held by nobody, or its holder
  has not renewed it within its lease duration;
- every write carries the Lease's resourceVersion, so two candidates that
  read the same expired Lease cannot both take it;
- the holder renews every ``retry_seconds`` and gives up (stops serving) when
  it has not renewed successfully for ``renew_seconds``, before anyone else
  may take over;
- on a clean shutdown it empties ``holderIdentity`` so a standby takes over
  at once.

The Lease keeps one controller active in normal operation. Correctness never
depends on it: two controllers serving at once (a split brain, an upgrade)
cannot hand out one address twice, because every address is an object whose
name the API server keeps unique.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from kubernetes import client as k8s

from vmoverlay import kube
from vmoverlay.logs import StructLogger


class LeaseElector:
    def __init__(
        self,
        client: k8s.ApiClient,
        *,
        name: str,
        namespace: str,
        identity: str,
        log: StructLogger,
        lease_seconds: int = 15,
        renew_seconds: float = 10.0,
        retry_seconds: float = 2.0,
    ) -> None:
        if not retry_seconds < renew_seconds < lease_seconds:
            raise ValueError("need retry_seconds < renew_seconds < lease_seconds")
        self._api = k8s.CoordinationV1Api(client)
        self.name, self.namespace, self.identity = name, namespace, identity
        self._log = log.bind(lease=f"{namespace}/{name}", identity=identity)
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.retry_seconds = retry_seconds
        self.holder: str | None = None
        self.leading = threading.Event()
        self._write_lock = threading.Lock()

    def run(self, stop: threading.Event, *, on_lost: Callable[[], None]) -> None:
        """Block until this replica leads (or ``stop``); then renew in the background."""
        while not stop.is_set() and not self._try_acquire_or_renew():
            stop.wait(self.retry_seconds)
        if stop.is_set():
            return
        self.leading.set()
        self._log.info("became leader")
        threading.Thread(
            target=self._renew_loop, args=(stop, on_lost), name="lease-renew", daemon=True
        ).start()

    def _renew_loop(self, stop: threading.Event, on_lost: Callable[[], None]) -> None:
        last_renew = time.monotonic()
        while not stop.wait(self.retry_seconds):
            renewed = self._renew()
            if renewed is None:
                return  # released meanwhile: renewing now would take the Lease back
            if renewed:
                last_renew = time.monotonic()
            elif time.monotonic() - last_renew > self.renew_seconds:
                self.leading.clear()
                self._log.error("lost leadership: lease not renewed in time", holder=self.holder)
                on_lost()
                return
        self.release()

    def release(self) -> None:
        """Give the Lease up so a standby takes over at once (best effort).

        The renew loop stops renewing once ``leading`` is cleared; ``_write_lock``
        makes a renewal already under way finish first, so it cannot take the Lease
        back after this empties it.
        """
        with self._write_lock:
            if not self.leading.is_set():
                return
            self.leading.clear()
            self._release_locked()

    def _release_locked(self) -> None:
        try:
            lease = kube.call(self._api.read_namespaced_lease, self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.lease_duration_seconds = 1
                kube.call(self._api.replace_namespaced_lease, self.name, self.namespace, lease)
                self._log.info("released lease")
        except kube.KubeError as exc:
            self._log.warning("failed to release lease; it expires by itself", error=str(exc))

    def _try_acquire_or_renew(self) -> bool:
        with self._write_lock:
            return self._try_locked()

    def _renew(self) -> bool | None:
        """Renew while leading: True/False for renewed or not, None once released."""
        with self._write_lock:
            if not self.leading.is_set():
                return None
            return self._try_locked()

    def _try_locked(self) -> bool:
        try:
            return self._acquire_or_renew()
        except (kube.Conflict, kube.AlreadyExists):
            return False
        except kube.KubeError as exc:
            self._log.warning("failed to read or write lease", error=str(exc))
            return False

    def _acquire_or_renew(self) -> bool:
        now = datetime.now(UTC)
        try:
            lease = kube.call(self._api.read_namespaced_lease, self.name, self.namespace)
        except kube.NotFound:
            body = k8s.V1Lease(
                metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(now, transitions=0, acquired=now),
            )
            kube.call(self._api.create_namespaced_lease, self.namespace, body)
            self.holder = self.identity
            return True

        spec = lease.spec or k8s.V1LeaseSpec()
        self.holder = spec.holder_identity
        if spec.holder_identity and spec.holder_identity != self.identity:
            renewed = spec.renew_time or spec.acquire_time
            duration = spec.lease_duration_seconds or self.lease_seconds
            if renewed is not None and (now - renewed).total_seconds() < duration:
                return False
        ours = spec.holder_identity == self.identity
        transitions = (spec.lease_transitions or 0) + (0 if ours else 1)
        lease.spec = self._spec(now, transitions, spec.acquire_time if ours else now)
        kube.call(self._api.replace_namespaced_lease, self.name, self.namespace, lease)
        self.holder = self.identity
        return True

    def _spec(self, now: datetime, transitions: int, acquired: datetime | None) -> k8s.V1LeaseSpec:
        return k8s.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_seconds,
            acquire_time=acquired or now,
            renew_time=now,
            lease_transitions=transitions,
        )
