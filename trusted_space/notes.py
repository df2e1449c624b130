r"""C2SP signed notes, checkpoints and witness cosignatures, byte-compatible with standard tooling.

Why: a node's ledger is only useful to others if its signed tree heads can be checked by
someone who does not run our code. We therefore publish them in the formats the transparency-log
ecosystem already verifies: a ``c2sp.org/tlog-checkpoint`` body signed as a
``c2sp.org/signed-note`` with Ed25519 (what Go's ``golang.org/x/mod/sumdb/note`` opens), and
witness cosignatures per ``c2sp.org/tlog-cosignature`` (``cosignature/v1``, signature type
``0x04``, what litewitness and other witnesses produce).

Threats: a forged or altered tree head (Ed25519 over the exact note text; any change to the body
fails); a signature made by one key presented under another name (the key id binds name, type
and key, and a verifier only checks lines whose name *and* id match its key); a cosignature
replayed onto another checkpoint (the cosigned message contains the whole checkpoint body and a
timestamp); a cosignature key confused with a log key (type byte ``0x04`` vs ``0x01`` in the key
id and a ``cosignature/v1`` domain-separation header). Parsing is strict (UTF-8, no control
characters, canonical decimal, exact base64) so two parties never read one note two ways.

Formats (``||`` is concatenation, ``\n`` is U+000A, ``—`` is U+2014)::

    key id      = SHA-256(name || "\n" || type || 32-byte public key)[:4]   type 0x01 or 0x04
    vkey        = name "+" hex8(key id) "+" base64(type || public key)
    note        = text "\n" (one or more) "— " name " " base64(key id || sig) "\n"
    checkpoint  = origin "\n" decimal(size) "\n" base64(root) "\n" [extension lines]
    cosigned    = "cosignature/v1\ntime " decimal(t) "\n" || checkpoint body
    cosig line  = "— " name " " base64(key id || uint64_be(t) || ed25519(cosigned))
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from trusted_space.errors import ValidationError, VerificationError
from trusted_space.keys import SigningKey, VerifyKey

__all__ = [
    "COSIGNATURE_HEADER",
    "MAX_SIGNATURES",
    "SIG_COSIGNATURE_V1",
    "SIG_ED25519",
    "Checkpoint",
    "Cosignature",
    "Note",
    "NoteSignature",
    "NoteVerifier",
    "add_cosignature",
    "cosignature_message",
    "format_checkpoint",
    "key_id",
    "make_vkey",
    "parse_checkpoint",
    "parse_note",
    "parse_vkey",
    "sign_note",
    "verify_cosignature",
    "verify_note",
]

SIG_ED25519 = 0x01
SIG_COSIGNATURE_V1 = 0x04
COSIGNATURE_HEADER = "cosignature/v1\n"
MAX_SIGNATURES = 100
"""Go's sumdb/note refuses more than 100 signature lines; so do we (the spec asks for ≥ 16)."""

_DASH = "\u2014"
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)\Z")
_HEX8 = re.compile(r"[0-9a-f]{8}\Z")
_MAX_U63 = (1 << 63) - 1


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64 (RFC 4648 §4): padding required, no stray characters."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ValidationError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValidationError(f"{what} is not canonical base64")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _valid_name(name: str) -> bool:
    """Non-empty, no Unicode space, no ``+`` (C2SP signed-note §Format)."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def _check_text(text: str, what: str) -> None:
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise ValidationError(f"{what} contains a control character")


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """``SHA-256(name || 0x0A || type || public key)[:4]`` (C2SP signed-note key id)."""
    if not _valid_name(name):
        raise ValidationError(f"invalid note key name {name!r}")
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key).digest()[
        :4
    ]


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted note key: name, signature type (``0x01`` log key, ``0x04`` cosigner) and key."""

    name: str
    sig_type: int
    key: VerifyKey

    def __post_init__(self) -> None:
        if not _valid_name(self.name):
            raise ValidationError(f"invalid note key name {self.name!r}")
        if self.sig_type not in (SIG_ED25519, SIG_COSIGNATURE_V1):
            raise ValidationError(f"unsupported note signature type {self.sig_type:#04x}")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.sig_type, self.key.raw)

    @property
    def vkey(self) -> str:
        """The verifier key string ``name+hex(keyid)+base64(type || pubkey)``."""
        return make_vkey(self.name, self.key, self.sig_type)


def make_vkey(name: str, key: VerifyKey, sig_type: int = SIG_ED25519) -> str:
    """Encode a verifier key as Go's ``note.NewEd25519VerifierKey`` does (type ``0x04`` too)."""
    material = bytes([sig_type]) + key.raw
    return f"{name}+{key_id(name, sig_type, key.raw).hex()}+{_b64encode(material)}"


def parse_vkey(text: str) -> NoteVerifier:
    """Parse ``name+hex8+base64(type || key)``; the key id must match the key.

    Raises:
        ValidationError: malformed, unknown type, wrong key length or mismatched key id.
    """
    if not isinstance(text, str):
        raise ValidationError("a vkey is a string")
    parts = text.split("+", 2)
    if len(parts) != 3 or not _HEX8.match(parts[1]) or not _valid_name(parts[0]):
        raise ValidationError("malformed vkey")
    name, hex_id, b64 = parts
    material = _b64decode(b64, "vkey key material")
    if len(material) != 33 or material[0] not in (SIG_ED25519, SIG_COSIGNATURE_V1):
        raise ValidationError("vkey is not an Ed25519 (0x01) or cosignature/v1 (0x04) key")
    verifier = NoteVerifier(name, material[0], VerifyKey(material[1:]))
    if verifier.key_id.hex() != hex_id:
        raise ValidationError("vkey key id does not match its key")
    return verifier


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, 4-byte key id and the signature bytes after the id."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{_DASH} {self.name} {_b64encode(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """A parsed (not yet verified) signed note: its text and signature lines, in order."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def format(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


def parse_note(message: str | bytes) -> Note:
    """Split a signed note into text and signature lines, as Go's ``note.Open`` does.

    The text ends at the *last* blank line; it must end in a newline and may contain blank
    lines itself. The text is *not* trustworthy until :func:`verify_note` accepts it.

    Raises:
        ValidationError: not UTF-8, a control character, no signature block, a malformed
            signature line or more than :data:`MAX_SIGNATURES` lines.
    """
    if isinstance(message, bytes):
        try:
            message = message.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError("note is not UTF-8") from exc
    _check_text(message, "note")
    split = message.rfind("\n\n")
    if split < 0 or not message.endswith("\n"):
        raise ValidationError("malformed note: no signature block")
    text, block = message[: split + 1], message[split + 2 :]
    lines = block.split("\n")[:-1]  # block ends with "\n"
    if not lines or len(lines) > MAX_SIGNATURES:
        raise ValidationError("malformed note: missing or too many signatures")
    signatures: list[NoteSignature] = []
    for line in lines:
        prefix = _DASH + " "
        if not line.startswith(prefix):
            raise ValidationError("malformed note: bad signature line")
        fields = line[len(prefix) :].split(" ")
        if len(fields) != 2 or not _valid_name(fields[0]):
            raise ValidationError("malformed note: bad signature line")
        raw = _b64decode(fields[1], "note signature")
        if len(raw) < 5:
            raise ValidationError("malformed note: signature too short")
        signatures.append(NoteSignature(fields[0], raw[:4], raw[4:]))
    return Note(text, tuple(signatures))


def _check_note_text(text: str) -> None:
    if not text.endswith("\n"):
        raise ValidationError("note text must be non-empty and end in a newline")
    _check_text(text, "note text")


def sign_note(text: str, name: str, key: SigningKey) -> str:
    """Sign ``text`` as a C2SP signed note with an Ed25519 (type ``0x01``) signature line.

    Ed25519 is deterministic (RFC 8032), so the output is byte-identical to Go's ``note.Sign``
    with the same key.
    """
    _check_note_text(text)
    sig = NoteSignature(
        name, key_id(name, SIG_ED25519, key.verify_key.raw), key.sign(text.encode("utf-8"))
    )
    return Note(text, (sig,)).format()


def _open_signed_by(
    message: str | bytes, verifier: NoteVerifier, sig_type: int, what: str
) -> tuple[Note, list[NoteSignature]]:
    """Parse a note and return it with the signature lines of ``verifier`` (at least one).

    Raises:
        VerificationError: wrong key type, malformed note, or no line from this key.
    """
    if verifier.sig_type != sig_type:
        raise VerificationError(f"verifier is not a {what} key (type 0x{sig_type:02x})")
    try:
        note = parse_note(message)
    except ValidationError as exc:
        raise VerificationError(f"malformed note: {exc}") from exc
    kid = verifier.key_id
    matching = [s for s in note.signatures if s.name == verifier.name and s.key_id == kid]
    if not matching:
        raise VerificationError(f"note has no {what} from {verifier.name}")
    return note, matching


def verify_note(message: str | bytes, verifier: NoteVerifier) -> Note:
    """Open a note signed by ``verifier`` (a type ``0x01`` key); return it parsed.

    Lines from other keys are ignored (they may be cosignatures). Every line matching the
    verifier's name and key id must verify, and there must be at least one.

    Raises:
        VerificationError: malformed note, no signature from this key, or a bad signature.
    """
    note, matching = _open_signed_by(message, verifier, SIG_ED25519, "signature")
    body = note.text.encode("utf-8")
    for sig in matching:
        if not verifier.key.verify(sig.signature, body):
            raise VerificationError(f"invalid signature from {verifier.name}")
    return note


# -- checkpoints ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A tree head as a C2SP ``tlog-checkpoint`` body: origin, size, root, extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise ValidationError("checkpoint origin must be one non-empty line")
        _check_text(self.origin, "checkpoint origin")
        if not isinstance(self.size, int) or self.size < 0:
            raise ValidationError("checkpoint size must be an integer >= 0")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise ValidationError("checkpoint root must be 32 bytes")
        for line in self.extensions:
            if not line or "\n" in line:
                raise ValidationError("checkpoint extension lines must be non-empty lines")
            _check_text(line, "checkpoint extension")

    def body(self) -> str:
        """The exact note text that is signed."""
        lines = [self.origin, str(self.size), _b64encode(self.root), *self.extensions]
        return "\n".join(lines) + "\n"


def format_checkpoint(checkpoint: Checkpoint) -> str:
    """The note text of a checkpoint (same as :meth:`Checkpoint.body`)."""
    return checkpoint.body()


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint body (the note text, not the whole note).

    Raises:
        ValidationError: fewer than three lines, a non-canonical size, a root that is not
            exactly 32 bytes of canonical base64, or an empty extension line.
    """
    if not text.endswith("\n"):
        raise ValidationError("checkpoint text must end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise ValidationError("checkpoint needs origin, size and root lines")
    origin, size, root, *extensions = lines
    if not _DECIMAL.match(size):
        raise ValidationError("checkpoint size is not a canonical decimal")
    return Checkpoint(origin, int(size), _b64decode(root, "checkpoint root"), tuple(extensions))


# -- cosignatures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cosignature:
    """A verified ``cosignature/v1``: who cosigned and when (POSIX seconds)."""

    name: str
    timestamp: int


def cosignature_message(checkpoint_text: str, timestamp: int) -> bytes:
    """The bytes an Ed25519 ``cosignature/v1`` signs (C2SP tlog-cosignature)."""
    if not 0 <= timestamp <= _MAX_U63:
        raise ValidationError("cosignature timestamp out of range")
    return f"{COSIGNATURE_HEADER}time {timestamp}\n{checkpoint_text}".encode()


def add_cosignature(message: str, name: str, key: SigningKey, timestamp: int) -> str:
    """Append a ``cosignature/v1`` line by ``key`` to a signed checkpoint note.

    The caller (the witness) must already have verified the log's signature and the
    checkpoint's consistency: a cosignature is a statement that it did.
    """
    note = parse_note(message)
    signed = key.sign(cosignature_message(note.text, timestamp))
    kid = key_id(name, SIG_COSIGNATURE_V1, key.verify_key.raw)
    line = NoteSignature(name, kid, struct.pack(">Q", timestamp) + signed)
    others = tuple(s for s in note.signatures if not (s.name == name and s.key_id == kid))
    return Note(note.text, (*others, line)).format()


def verify_cosignature(message: str | bytes, cosigner: NoteVerifier) -> Cosignature:
    """Check the ``cosignature/v1`` from ``cosigner`` (a type ``0x04`` key) on a note.

    This does not check the log's own signature; use :func:`verify_note` for that.

    Raises:
        VerificationError: malformed note, no cosignature from this key, or a bad one.
    """
    note, matching = _open_signed_by(message, cosigner, SIG_COSIGNATURE_V1, "cosignature")
    newest = -1
    for sig in matching:
        if len(sig.signature) != 8 + 64:
            raise VerificationError("cosignature has the wrong length")
        (timestamp,) = struct.unpack(">Q", sig.signature[:8])
        if timestamp > _MAX_U63 or not cosigner.key.verify(
            sig.signature[8:], cosignature_message(note.text, timestamp)
        ):
            raise VerificationError(f"invalid cosignature from {cosigner.name}")
        newest = max(newest, timestamp)
    return Cosignature(cosigner.name, newest)
