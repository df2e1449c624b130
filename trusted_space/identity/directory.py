"""The member directory every node keeps, and the operator authority of the operator node.

:class:`MemberDirectory` holds admitted members' credentials and the latest revocation list;
:class:`OperatorAuthority` admits members, issues credentials and revokes them.
"""

from __future__ import annotations

import hmac
import threading
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from trusted_space.errors import ConflictError, NotFoundError, VerificationError
from trusted_space.events import record_event
from trusted_space.identity.credentials import (
    DEFAULT_CREDENTIAL_VALIDITY,
    MembershipCredential,
    check_credential_window,
    issue_credential,
    verify_credential,
)
from trusted_space.identity.jws import CLOCK_SKEW, check_participant_id, sign_compact, to_epoch
from trusted_space.identity.revocation import (
    REVOCATION_TYP,
    Revocation,
    RevocationList,
    parse_revocation_list,
)
from trusted_space.keys import ALGORITHM, SigningKey, VerifyKey
from trusted_space.store import Transaction

__all__ = ["MemberDirectory", "OperatorAuthority"]

_NS_MEMBER = "member"
_NS_ISSUED = "issued"
_NS_REVOCATION = "revocation"
_NS_REVOCATION_LIST = "revocation-list"
_CURRENT = "current"
_VERIFIED_MEMO = 4096
"""Stored credential tokens whose signature this directory has checked, kept verified."""


class MemberDirectory:
    """The members this node knows, their credentials and the revocations it has applied.

    Every node has one, configured with the operator's id and verify key (obtained out of band at
    deployment, like a root certificate). Credentials arrive at admission (the operator stores its
    own issues here) or are fetched from the operator and added with :meth:`add`, which verifies
    them; nothing unverified is ever stored.
    """

    def __init__(self, operator_id: str, operator_key: VerifyKey) -> None:
        self.operator_id = check_participant_id(operator_id)
        self.operator_key = operator_key
        # token -> its verified claims. A token's signature and shape verify the same way every
        # time under one operator key, so a stored credential is verified once, not at each of
        # a member's calls; its window and revocation are still checked at every use.
        self._verified: OrderedDict[str, MembershipCredential] = OrderedDict()
        self._verified_lock = threading.Lock()

    def _verify_stored(self, token: str) -> MembershipCredential:
        with self._verified_lock:
            credential = self._verified.get(token)
            if credential is not None:
                self._verified.move_to_end(token)
                return credential
        credential = verify_credential(
            token, self.operator_key, operator_id=self.operator_id, now=None
        )
        with self._verified_lock:
            self._verified[token] = credential
            while len(self._verified) > _VERIFIED_MEMO:
                self._verified.popitem(last=False)
        return credential

    def add(self, tx: Transaction, token: str, *, now: datetime) -> MembershipCredential:
        """Verify a credential and make it the current one for its participant.

        A credential whose ``not_before`` is still ahead may be stored; it is refused at use until
        then (:meth:`active`).

        An older credential never replaces a newer one (``iat`` decides), so a replayed stale
        credential cannot undo a key rotation.

        Raises:
            VerificationError: the credential does not verify, is out of its window, or is revoked.
        """
        credential = verify_credential(
            token, self.operator_key, operator_id=self.operator_id, now=None
        )
        if to_epoch(now) >= to_epoch(credential.expires_at):
            raise VerificationError("credential-expired")
        if self.is_revoked(tx, credential.credential_id):
            raise VerificationError("revoked")
        current = tx.get(_NS_MEMBER, credential.participant_id)
        if current is not None and current.body["iat"] > to_epoch(credential.issued_at):
            raise VerificationError("credential-superseded")
        tx.put(
            _NS_MEMBER,
            credential.participant_id,
            {
                "token": token,
                "cid": credential.credential_id,
                "iat": to_epoch(credential.issued_at),
            },
        )
        return credential

    def get(self, tx: Transaction, participant_id: str) -> MembershipCredential:
        """The stored credential of a participant, re-verified; no time or revocation checks.

        Raises:
            NotFoundError: the participant is not known here.
        """
        doc = tx.get(_NS_MEMBER, participant_id)
        if doc is None:
            raise NotFoundError(f"no member {participant_id!r}")
        return self._verify_stored(doc.body["token"])

    def active(
        self, tx: Transaction, participant_id: str, *, now: datetime, skew: timedelta = CLOCK_SKEW
    ) -> MembershipCredential:
        """The participant's credential if it is known, inside its window and not revoked.

        Raises:
            VerificationError: ``unknown-issuer``, ``revoked``, ``credential-expired``, ...
        """
        doc = tx.get(_NS_MEMBER, participant_id)
        if doc is None:
            raise VerificationError("unknown-issuer")
        credential = self._verify_stored(doc.body["token"])
        check_credential_window(credential, now, skew=skew)
        if self.is_revoked(tx, credential.credential_id):
            raise VerificationError("revoked")
        return credential

    def is_revoked(self, tx: Transaction, credential_id: str) -> bool:
        return tx.get(_NS_REVOCATION, credential_id) is not None

    def revocation_sequence(self, tx: Transaction) -> int:
        """Sequence number of the latest revocation list applied here (-1 when none)."""
        doc = tx.get(_NS_REVOCATION_LIST, _CURRENT)
        return -1 if doc is None else int(doc.body["seq"])

    def current_revocation_list(self, tx: Transaction) -> RevocationList:
        """The latest signed revocation list applied (or, on the operator, issued) here.

        Raises:
            NotFoundError: no list has been applied yet.
        """
        doc = tx.require(_NS_REVOCATION_LIST, _CURRENT)
        return parse_revocation_list(doc.body["token"], self.operator_key, self.operator_id)

    def apply_revocation_list(self, tx: Transaction, token: str) -> int:
        """Verify a signed revocation list from the operator and apply it.

        Returns:
            How many revocations were new on this node.

        Raises:
            VerificationError: the list does not verify.
            ConflictError: its sequence is older than the one applied here (a rollback attempt),
                or equal with different content (the operator equivocated).
        """
        rlist = parse_revocation_list(token, self.operator_key, self.operator_id)
        current = tx.get(_NS_REVOCATION_LIST, _CURRENT)
        if current is not None:
            seq = int(current.body["seq"])
            if rlist.sequence == seq and hmac.compare_digest(current.body["token"], token):
                return 0
            if rlist.sequence <= seq:
                raise ConflictError(
                    f"revocation list {rlist.sequence} is not newer than applied list {seq}"
                )
        added = 0
        for entry in rlist.revocations:
            if tx.get(_NS_REVOCATION, entry.credential_id) is None:
                tx.put(_NS_REVOCATION, entry.credential_id, _revocation_body(entry))
                added += 1
        tx.put(_NS_REVOCATION_LIST, _CURRENT, {"seq": rlist.sequence, "token": token})
        return added


def _revocation_body(entry: Revocation) -> dict[str, Any]:
    return {
        "cid": entry.credential_id,
        "sub": entry.participant_id,
        "at": to_epoch(entry.revoked_at),
    }


class OperatorAuthority:
    """The operator node's side: admit participants, revoke them, sign the revocation list.

    Every issue and revocation is recorded in the ledger in the same transaction.
    """

    def __init__(self, operator_id: str, signing_key: SigningKey) -> None:
        self.operator_id = check_participant_id(operator_id)
        self._key = signing_key
        self.directory = MemberDirectory(operator_id, signing_key.verify_key)

    def issue(
        self,
        tx: Transaction,
        participant_id: str,
        roles: Iterable[str],
        public_key: VerifyKey,
        *,
        now: datetime,
        not_before: datetime | None = None,
        valid_for: timedelta = DEFAULT_CREDENTIAL_VALIDITY,
    ) -> MembershipCredential:
        """Issue a credential, store it in this node's directory, record ``credential.issued``."""
        credential = issue_credential(
            self._key,
            self.operator_id,
            participant_id,
            roles,
            public_key,
            now=now,
            not_before=not_before,
            valid_for=valid_for,
        )
        tx.insert(
            _NS_ISSUED,
            f"{participant_id}/{credential.credential_id}",
            {"cid": credential.credential_id, "exp": to_epoch(credential.expires_at)},
        )
        self.directory.add(tx, credential.token, now=now)
        record_event(
            tx,
            "credential.issued",
            {
                "credential_id": credential.credential_id,
                "participant": participant_id,
                "roles": sorted(credential.roles),
                "key": public_key.fingerprint,
                "not_before": credential.not_before.isoformat(),
                "expires_at": credential.expires_at.isoformat(),
            },
            time=now,
        )
        return credential

    def revoke(
        self, tx: Transaction, participant_id: str, *, now: datetime, reason: str
    ) -> RevocationList:
        """Revoke every credential ever issued to ``participant_id`` and sign a new list.

        Raises:
            NotFoundError: no credential was ever issued to that participant.
        """
        issued = tx.scan(_NS_ISSUED, f"{check_participant_id(participant_id)}/")
        if not issued:
            raise NotFoundError(f"no credential was issued to {participant_id!r}")
        revoked: list[str] = []
        for doc in issued:
            cid = doc.body["cid"]
            if tx.get(_NS_REVOCATION, cid) is None:
                entry = Revocation(cid, participant_id, now)
                tx.put(_NS_REVOCATION, cid, _revocation_body(entry))
                revoked.append(cid)
        rlist = self._sign_list(tx, now)
        record_event(
            tx,
            "credential.revoked",
            {
                "participant": participant_id,
                "credential_ids": revoked,
                "reason": reason,
                "list_sequence": rlist.sequence,
            },
            time=now,
        )
        return rlist

    def revocation_list(self, tx: Transaction, *, now: datetime) -> RevocationList:
        """The current signed list, for other nodes to fetch (an empty list, seq 0, at first)."""
        if tx.get(_NS_REVOCATION_LIST, _CURRENT) is None:
            return self._sign_list(tx, now)
        return self.directory.current_revocation_list(tx)

    def _sign_list(self, tx: Transaction, now: datetime) -> RevocationList:
        seq = self.directory.revocation_sequence(tx) + 1
        entries = sorted(
            (d.body for d in tx.scan(_NS_REVOCATION)), key=lambda body: str(body["cid"])
        )
        header = {"alg": ALGORITHM, "typ": REVOCATION_TYP, "kid": self._key.verify_key.fingerprint}
        claims = {"iss": self.operator_id, "seq": seq, "iat": to_epoch(now), "revoked": entries}
        token = sign_compact(self._key, header, claims)
        tx.put(_NS_REVOCATION_LIST, _CURRENT, {"seq": seq, "token": token})
        return parse_revocation_list(token, self._key.verify_key, self.operator_id)
