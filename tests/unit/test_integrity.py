"""One integrity check for every reader of a whole stored object (nubis.blobs.integrity), and
RetrieveService's one way out for whole objects: checked as ``verify_reads`` says, converted
only to a syntax the peer accepts, never bad bytes that look complete.

A stored object is served as it was stored or not at all (PS3.18 10.4: the origin server
returns the stored instance, or an error); PS3.4 C.4.2.3.1: a C-MOVE / C-GET SCP sends an
object in a transfer syntax the destination accepted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
)

from nubis.archive import Archive
from nubis.blobs.integrity import verified_chunks, verify_chunks
from nubis.config import load_settings
from nubis.errors import BlobCorrupted, NotAcceptable
from nubis.model.records import StoredInstance
from nubis.security.authn import cli_principal
from nubis.services.retrieve import AS_STORED
from nubis.tools.synth import dataset_bytes, series_datasets

DATA = bytes(range(256)) * 40
DIGEST = hashlib.sha256(DATA).hexdigest()


def _chunks(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _passed(chunks: list[bytes], size: int, digest: str) -> tuple[bytes, bool]:
    """What a reader would send on, and whether the check refused the object."""
    sent = b""
    try:
        for chunk in verified_chunks(iter(chunks), size, digest):
            sent += chunk
    except BlobCorrupted:
        return sent, True
    return sent, False


def test_an_intact_object_passes_whole() -> None:
    assert _passed(_chunks(DATA), len(DATA), DIGEST) == (DATA, False)
    verify_chunks(_chunks(DATA), len(DATA), DIGEST)


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("last byte flipped", DATA[:-1] + bytes([DATA[-1] ^ 1])),
        ("first byte flipped", bytes([DATA[0] ^ 1]) + DATA[1:]),
        ("a byte more", DATA + b"\0"),
        ("a chunk more", DATA + b"\0" * 1000),
        ("a byte less", DATA[:-1]),
        ("empty", b""),
    ],
)
def test_a_changed_object_never_passes_whole(name: str, stored: bytes) -> None:
    """Whatever changed, the bytes passed on are never the whole recorded length: the chunk
    that would complete (or overrun) the object is withheld, so the client sees a broken
    stream, not a complete object with wrong bytes."""
    sent, refused = _passed(_chunks(stored), len(DATA), DIGEST)
    assert refused, name
    assert len(sent) < len(DATA), name
    with pytest.raises(BlobCorrupted):
        verify_chunks(_chunks(stored), len(DATA), DIGEST)


def test_an_empty_object_is_checked_too() -> None:
    empty = hashlib.sha256(b"").hexdigest()
    assert _passed([], 0, empty) == (b"", False)
    assert _passed([b"x"], 0, empty) == (b"", True)
    assert _passed([], 0, DIGEST)[1]


# ---------------------------------------------------------------------- RetrieveService


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    """A plaintext archive (its reads are checked by digest) holding one small CT object."""
    settings = load_settings(
        environ={},
        overrides={"data_dir": str(tmp_path / "data"), "durable": "false",
                   "encrypt_at_rest": "false"},
    )  # fmt: skip
    with Archive(settings) as opened:
        ds = next(series_datasets("CT", n_instances=1, rows=64, columns=64, seed=41))
        source = tmp_path / "ct.dcm"
        source.write_bytes(dataset_bytes(ds))
        outcome = opened.store.store(opened.spool.from_file(source), principal=cli_principal())
        assert outcome.ok, outcome.error
        yield opened


def _instance(archive: Archive) -> StoredInstance:
    (study,) = _studies(archive)
    (inst,) = archive.retrieve.instances(cli_principal(), study)
    return inst


def _studies(archive: Archive) -> list[str]:
    from sqlalchemy import select

    from nubis.index.schema import studies

    with archive.index.reading() as conn:
        return [row[0] for row in conn.execute(select(studies.c.study_uid)).all()]


def _blob(archive: Archive, inst: StoredInstance) -> Path:
    key = inst.blob_key
    return archive.settings.data_dir / "blobs" / key[:2] / key[2:4] / key


def _read(chunks: Iterator[bytes]) -> tuple[bytes, BaseException | None]:
    sent = b""
    try:
        for chunk in chunks:
            sent += chunk
    except BlobCorrupted as exc:
        return sent, exc
    return sent, None


def test_a_longer_blob_is_withheld_not_sent(archive: Archive) -> None:
    """A blob that grew (a byte appended on disk) sends nothing of itself: the chunk that runs
    past the recorded size is the one withheld."""
    inst = _instance(archive)
    blob = _blob(archive, inst)
    blob.write_bytes(blob.read_bytes() + b"\0")
    sent, error = _read(archive.retrieve.instance_chunks(inst, AS_STORED))
    assert isinstance(error, BlobCorrupted)
    assert sent == b""


def test_a_conversion_is_never_made_of_bad_bytes(archive: Archive) -> None:
    """Converting to another transfer syntax reads the stored object checked first, as
    serving it as stored does: a flipped pixel byte is an error, not a converted object."""
    inst = _instance(archive)
    assert inst.transfer_syntax_uid == ExplicitVRLittleEndian
    converted = archive.retrieve.instance_bytes(inst, ImplicitVRLittleEndian)
    assert converted[128:132] == b"DICM"
    blob = _blob(archive, inst)
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF  # inside Pixel Data
    blob.write_bytes(bytes(data))
    with pytest.raises(BlobCorrupted):
        archive.retrieve.instance_bytes(inst, ImplicitVRLittleEndian)
    with pytest.raises(BlobCorrupted):
        archive.retrieve.verify(inst)


def test_verify_checks_whatever_verify_reads_says(archive: Archive) -> None:
    """Serving follows ``verify_reads``; ``verify`` is for callers that must know, and always
    reads and checks."""
    inst = _instance(archive)
    blob = _blob(archive, inst)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    archive.retrieve.verify_reads = False
    sent, error = _read(archive.retrieve.instance_chunks(inst, AS_STORED))
    assert error is None and sent == bytes(data)
    with pytest.raises(BlobCorrupted):
        archive.retrieve.verify(inst)


@pytest.mark.parametrize(
    ("accepted", "chosen"),
    [
        (None, ExplicitVRLittleEndian),  # no negotiation: as stored
        ({ExplicitVRLittleEndian, ImplicitVRLittleEndian}, ExplicitVRLittleEndian),
        ({ImplicitVRLittleEndian}, ImplicitVRLittleEndian),
        ({JPEGLSLossless, ImplicitVRLittleEndian}, ImplicitVRLittleEndian),
    ],
)
def test_the_syntax_sent_is_one_the_peer_accepted(
    archive: Archive, accepted: set[str] | None, chosen: str
) -> None:
    """PS3.4 C.4.2.3.1: as stored when the peer accepts it, else a conversion it accepts,
    uncompressed first."""
    assert archive.retrieve.syntax_for(_instance(archive), accepted) == chosen


def test_no_syntax_the_peer_accepts(archive: Archive) -> None:
    with pytest.raises(NotAcceptable, match="accepts no transfer syntax"):
        archive.retrieve.syntax_for(_instance(archive), {"1.2.3.4"})


@pytest.mark.parametrize(
    ("accepted", "chosen"),
    [
        (None, HTJ2KLossless),  # no negotiation: as stored
        ({HTJ2KLossless, ExplicitVRLittleEndian}, ExplicitVRLittleEndian),  # as it arrived
        ({HTJ2KLossless, ImplicitVRLittleEndian}, HTJ2KLossless),
        ({ImplicitVRLittleEndian}, ImplicitVRLittleEndian),
    ],
)
def test_a_tier_compressed_object_goes_in_the_syntax_it_arrived_in(
    archive: Archive, accepted: set[str] | None, chosen: str
) -> None:
    """A peer that takes the syntax an object arrived in gets it back in that syntax, not the
    codec a tier chose for keeping it (nubis.tiers.compression)."""
    compressed = replace(
        _instance(archive),
        transfer_syntax_uid=HTJ2KLossless,
        original_transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    assert archive.retrieve.syntax_for(compressed, accepted) == chosen


def _swap_in_a_copy(archive: Archive, inst: StoredInstance) -> None:
    """What a re-encryption (rekey, rewrap) does under a read: a new blob with the same
    bytes, the row swapped to it in one transaction, the old blob deleted."""
    from sqlalchemy import update

    from nubis.index.schema import instances

    new_key = archive.blobs.new_key()
    new_blob = _blob(archive, replace(inst, blob_key=new_key))
    new_blob.parent.mkdir(parents=True, exist_ok=True)
    new_blob.write_bytes(_blob(archive, inst).read_bytes())
    archive.index.write(
        lambda conn: conn.execute(
            update(instances).where(instances.c.id == inst.pk).values(blob_key=new_key)
        )
    )
    _blob(archive, inst).unlink()


def test_a_read_follows_a_blob_swapped_in_under_it(archive: Archive) -> None:
    """A read whose row names a blob that a re-encryption has since replaced and deleted is
    answered from the row's new blob, whole and checked, not failed (a 500 under a rekey)."""
    stale = _instance(archive)
    stored = _blob(archive, stale).read_bytes()
    _swap_in_a_copy(archive, stale)
    sent, error = _read(archive.retrieve.instance_chunks(stale, AS_STORED))
    assert (sent, error) == (stored, None)
    assert archive.retrieve.read(stale, 128, 4) == b"DICM"
    with archive.retrieve.open(stale) as opened:
        assert opened.read() == stored


def test_a_read_of_an_instance_deleted_under_it_is_404(archive: Archive) -> None:
    """Blob and row both gone (a DELETE that committed first): NotFound, not a stack trace."""
    from nubis.errors import NotFound

    stale = _instance(archive)
    archive.index.delete(stale.partition, stale.study_uid)
    _blob(archive, stale).unlink()
    with pytest.raises(NotFound, match="deleted while it was being read"):
        archive.retrieve.read(stale, 0, 4)
