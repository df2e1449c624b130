"""The node's periodic work: witness its ledger, catch up on revocations, forget expired jtis.

Every ``settings.witness_interval`` seconds (0 disables the loop) one daemon thread runs, in order:

1. :func:`~connectors.node.federation.submit_checkpoint`: a fresh checkpoint, cosigned by the
operator's
   witness, so a later rewrite of this log is caught by anyone holding the cosigned head;
2. :func:`~connectors.node.federation.sync_revocations`: a node that was down when the operator
pushed
   a revocation list fetches it now (otherwise a revoked member stays accepted here);
3. on the operator, :func:`~connectors.node.federation.flag_silent_logs`: a member whose log
   was not submitted for ``witness_silence`` seconds is recorded (``witness.silent``);
4. :func:`~trusted_space.identity.purge_replay_cache`: replay-cache entries whose tokens can no
   longer pass the expiry check are deleted (keeping them longer buys nothing).

A failing job is logged and the loop goes on; one job's failure never skips the others. The loop
sleeps on an :class:`threading.Event`, so :meth:`Background.stop` returns at once, or after the job
in flight finishes (node-to-node calls here use a short timeout).
"""

from __future__ import annotations

import logging
import threading

from connectors.node import federation
from connectors.node.runtime import NodeRuntime
from trusted_space.identity import purge_replay_cache

__all__ = ["Background"]

log = logging.getLogger("trusted_space.background")

_JOIN_TIMEOUT = federation.OPERATOR_CALL_TIMEOUT + 2.0


class Background:
    """Periodic jobs of a node; started with the app, stopped at shutdown.

    Args:
        runtime: the node.
        interval: seconds between rounds (default: ``settings.witness_interval``; 0 = disabled).
    """

    def __init__(self, runtime: NodeRuntime, *, interval: float | None = None) -> None:
        self.runtime = runtime
        self.interval = runtime.settings.witness_interval if interval is None else interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the loop (nothing happens when the interval is 0)."""
        if self.interval <= 0 or self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name=f"ts-background-{self.runtime.id}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and wait for the round in flight (bounded by the call timeout)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=_JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("background jobs of %s still running at shutdown", self.runtime.id)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()

    def run_once(self) -> None:
        """One round of every job (also what tests and ``stop``-free callers use)."""
        runtime = self.runtime
        try:
            federation.submit_checkpoint(runtime)
        except Exception:
            log.exception("checkpoint submission failed")
        if self._stop.is_set():
            return
        if runtime.witness is not None:
            try:
                federation.flag_silent_logs(runtime)
            except Exception:
                log.exception("checking members' submissions failed")
        try:
            federation.sync_revocations(runtime)
        except Exception:
            log.exception("revocation sync failed")
        try:
            with runtime.transaction() as tx:
                purged = purge_replay_cache(tx, runtime.clock())
            if purged:
                log.debug("purged %d replay-cache entries", purged)
        except Exception:
            log.exception("replay-cache purge failed")
        self.rounds += 1
