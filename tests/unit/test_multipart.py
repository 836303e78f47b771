"""multipart/related reader and writer (RFC 2046 5.1.1, RFC 2387; PS3.18 8.6.1.2, 10.5)."""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import AsyncIterator, Iterable, Sequence

import pydicom
import pytest
from dicomweb_client.web import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from nubis.errors import BadRequest, UnsupportedMediaType
from nubis.web.dicomweb.multipart import (
    Part,
    iter_multipart,
    iter_parts,
    multipart_length,
    multipart_related_content_type,
    new_boundary,
    parse_multipart_content_type,
)

BOUNDARY = b"simple-boundary"
CHUNK_SIZES = [1, 2, 3, 7, 16, 17, 4096, 1 << 20]


async def _chunks(body: bytes, size: int | Sequence[int]) -> AsyncIterator[bytes]:
    if isinstance(size, int):
        for i in range(0, len(body), size):
            yield body[i : i + size]
        return
    i = 0
    sizes = iter(size)
    while i < len(body):
        n = next(sizes)
        yield body[i : i + n]
        i += n


def _random_sizes(seed: int, total: int) -> list[int]:
    rng = random.Random(seed)
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(rng.choice([0, 1, 2, 5, rng.randint(1, 200), rng.randint(1, 70000)]))
    return sizes


def parse(
    body: bytes,
    size: int | Sequence[int] = 4096,
    boundary: bytes = BOUNDARY,
    default_type: str = "",
) -> list[tuple[Part, bytes]]:
    async def run() -> list[tuple[Part, bytes]]:
        out: list[tuple[Part, bytes]] = []
        async for part, chunks in iter_parts(
            _chunks(body, size), boundary, default_type=default_type
        ):
            data = bytearray()
            async for chunk in chunks:
                assert isinstance(chunk, bytes)
                assert chunk
                data += chunk
            out.append((part, bytes(data)))
        return out

    return asyncio.run(run())


def body_of(
    parts: Iterable[tuple[dict[str, str], bytes]], boundary: str = "simple-boundary"
) -> bytes:
    return b"".join(iter_multipart(((h, [b]) for h, b in parts), boundary))


# --- Content-Type ----------------------------------------------------------------------------


def test_parse_content_type_stow() -> None:
    type_param, boundary, params = parse_multipart_content_type(
        'Multipart/Related; type="Application/DICOM"; boundary="0f3c:f5c0=70e0"; start=x'
    )
    assert type_param == "application/dicom"
    assert boundary == b"0f3c:f5c0=70e0"
    assert params == {"type": "application/dicom", "boundary": "0f3c:f5c0=70e0", "start": "x"}


def test_parse_content_type_unquoted_and_no_type() -> None:
    assert parse_multipart_content_type("multipart/related; boundary=abc") == (
        "",
        b"abc",
        {"boundary": "abc"},
    )


@pytest.mark.parametrize(
    "header", [None, "", "application/dicom", "multipart/form-data; boundary=x"]
)
def test_parse_content_type_not_multipart_related(header: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_multipart_content_type(header)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ('multipart/related; type="application/dicom"', "no boundary parameter"),
        ('multipart/related; boundary=""', "1 to 200 characters"),
        ("multipart/related; boundary=" + "a" * 201, "1 to 200 characters"),
        ('multipart/related; boundary="a\tb"', "non-printable"),
        ("multipart/related; boundary", "has no value"),
        ('multipart/related; boundary="abc', "unterminated"),
    ],
)
def test_parse_content_type_bad_boundary(header: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_multipart_content_type(header)


# --- Reader: structure -------------------------------------------------------------------------


SIMPLE = (
    b"This is the preamble.  It is to be ignored.\r\n"
    b"--simple-boundary\r\n"
    b"Content-Type: application/dicom\r\n"
    b"\r\n"
    b"first\r\nbody\r\n"
    b"--simple-boundary  \t \r\n"
    b"content-type: application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50\r\n"
    b"Content-Location: a\r\n"
    b"\r\n"
    b"second body\r\n\r\n"
    b"--simple-boundary--  \r\n"
    b"This is the epilogue. --simple-boundary\r\n garbage"
)


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_rfc2046_example_every_chunk_size(size: int) -> None:
    parts = parse(SIMPLE, size)
    assert [data for _, data in parts] == [b"first\r\nbody", b"second body\r\n"]
    first, second = (part for part, _ in parts)
    assert (first.index, first.media_type, first.headers) == (
        0,
        "application/dicom",
        {"content-type": "application/dicom"},
    )
    assert second.content_type == "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50"
    assert second.transfer_syntax == "1.2.840.10008.1.2.4.50"
    assert second.headers["content-location"] == "a"


@pytest.mark.parametrize("seed", range(20))
def test_rfc2046_example_random_chunking(seed: int) -> None:
    parts = parse(SIMPLE, _random_sizes(seed, len(SIMPLE)))
    assert [data for _, data in parts] == [b"first\r\nbody", b"second body\r\n"]


def test_first_boundary_at_offset_zero_and_no_trailing_crlf() -> None:
    body = b"--simple-boundary\r\n\r\nabc\r\n--simple-boundary--"
    [(part, data)] = parse(body, 1)
    assert data == b"abc"
    assert part.headers == {}


def test_part_without_content_type_takes_type_parameter() -> None:
    body = b"--simple-boundary\r\n\r\nabc\r\n--simple-boundary--"
    [(part, _)] = parse(body, default_type="application/dicom+json")
    assert part.content_type == "application/dicom+json"
    [(part, _)] = parse(body)
    assert part.content_type == "application/dicom"


def test_crlf_before_delimiter_belongs_to_delimiter() -> None:
    # Data ending in CRLF keeps it: only the last CRLF is the delimiter's.
    body = body_of([({}, b"\r\n"), ({}, b"\r\n\r\n"), ({}, b"x\r"), ({}, b"\n")])
    assert [d for _, d in parse(body, 1)] == [b"\r\n", b"\r\n\r\n", b"x\r", b"\n"]


def test_empty_parts() -> None:
    # A header block followed directly by the delimiter: RFC 2046 body-part = headers [CRLF data].
    body = (
        b"--simple-boundary\r\nContent-Type: a/b\r\n\r\n--simple-boundary\r\n"
        b"Content-Type: c/d\r\n\r\n\r\n--simple-boundary\r\n"
        b"\r\n--simple-boundary--"
    )
    for size in (1, 3, 4096):
        parts = parse(body, size)
        assert [(p.content_type, d) for p, d in parts] == [
            ("a/b", b""),
            ("c/d", b""),
            ("application/dicom", b""),
        ]


def test_near_miss_delimiters_are_data() -> None:
    near = [
        b"\r\n--simple-boundar",
        b"\r\n-simple-boundary",
        b"\r--simple-boundary",
        b"\n--simple-boundary",
        # Data may not start with the boundary: after the header block's CRLF it is a delimiter.
        b"x--simple-boundary",
        b"\r\r\n--simple-boundar\r\n--simple-bound",
        b"\r",
        b"\r\n",
        b"\r\n--",
    ]
    body = body_of([({"Content-Type": "x/y"}, data) for data in near])
    for size in (1, 5, 18, 19, 20, 21, 4096):
        assert [d for _, d in parse(body, size)] == near


def test_folded_and_repeated_headers() -> None:
    body = (
        b"--simple-boundary\r\n"
        b"Content-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"X-A: 1\r\nx-a: 2\r\n"
        b"\r\nz\r\n--simple-boundary--"
    )
    [(part, _)] = parse(body, 2)
    assert part.content_type == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert part.headers["x-a"] == "1, 2"


def test_unread_parts_are_skipped() -> None:
    datas = [bytes([i]) * (i * 10007) for i in range(1, 6)]
    body = body_of([({"Content-Type": "x/y"}, d) for d in datas])

    async def run(size: int) -> list[bytes]:
        seen: list[bytes] = []
        async for part, chunks in iter_parts(_chunks(body, size), BOUNDARY):
            if part.index % 2:
                continue
            if part.index == 2:
                seen.append(await chunks.__anext__())
                continue
            seen.append(b"".join([c async for c in chunks]))
        return seen

    for size in (1, 100, 65536):
        seen = asyncio.run(run(size))
        assert seen[0] == datas[0]
        assert datas[2].startswith(seen[1]) and seen[1]
        assert seen[2] == datas[4]


def test_stale_body_iterator_is_refused() -> None:
    body = body_of([({}, b"a" * 100), ({}, b"b")])

    async def run() -> None:
        stale = None
        async for part, chunks in iter_parts(_chunks(body, 10), BOUNDARY):
            if part.index == 0:
                stale = chunks
            else:
                assert stale is not None
                with pytest.raises(RuntimeError, match="part 1"):
                    await stale.__anext__()

    asyncio.run(run())


def test_consumed_body_iterator_stays_exhausted() -> None:
    body = body_of([({}, b"a"), ({}, b"b")])

    async def run() -> None:
        bodies = []
        async for _, chunks in iter_parts(_chunks(body, 10), BOUNDARY):
            assert [c async for c in chunks]
            bodies.append(chunks)
        assert [c async for c in bodies[0]] == []

    asyncio.run(run())


# --- Reader: malformed bodies ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no boundary delimiter --simple-boundary"),
        (b"preamble only\r\n--simple-bound", "no boundary delimiter"),
        (b"--simple-boundary--\r\n", "closing boundary but no parts"),
        (b"--simple-boundary", "ended before the closing boundary"),
        (b"--simple-boundary\r\nContent-Type: a/b\r\n", "ended inside the headers of part 1"),
        (b"--simple-boundary\r\n\r\npartial data", "ended before the closing boundary"),
        (b"--simple-boundary\r\n\r\ndata\r\n--simple-bou", "ended before the closing boundary"),
        (b"--simple-boundary\r\n\r\ndata\r\n", "ended before the closing boundary"),
        (b"--simple-boundary\r\n\r\ndata\r\n--simple-boundary", "ended before the closing"),
        (b"--simple-boundary\r\n\r\ndata\r\n--simple-boundary\r\n\r\nx", "ended before the"),
        (b"--simple-boundary\r\n\r\n", "ended before the closing boundary"),
        (b"--simple-boundaryX\r\n\r\nx\r\n--simple-boundary--", "followed by b'X"),
        (b"--simple-boundary\r\nno colon\r\n\r\nx\r\n--simple-boundary--", "malformed header"),
        (b"--simple-boundary \t\r", "ended before the closing boundary"),
    ],
)
def test_malformed_bodies(body: bytes, message: str) -> None:
    for size in (1, 4096):
        with pytest.raises(BadRequest, match=message):
            parse(body, size)


def test_missing_close_delimiter_reason_is_exact() -> None:
    with pytest.raises(BadRequest) as info:
        parse(b"--simple-boundary\r\n\r\nabc")
    assert info.value.reason == "multipart body ended before the closing boundary"


def test_oversized_headers_and_padding() -> None:
    huge = b"--simple-boundary\r\nX: " + b"a" * 20000 + b"\r\n\r\nx\r\n--simple-boundary--"
    with pytest.raises(BadRequest, match="exceed 16384 bytes"):
        parse(huge, 1000)
    padded = b"--simple-boundary" + b" " * 2000 + b"\r\n\r\nx\r\n--simple-boundary--"
    with pytest.raises(BadRequest, match="padding"):
        parse(padded, 100)


def test_reader_memory_is_bounded_in_preamble() -> None:
    # A long preamble is discarded as it streams: only a delimiter's length is carried over.
    async def stream() -> AsyncIterator[bytes]:
        for _ in range(2000):
            yield b"\r" * 65536
        yield b"\r\n--simple-boundary\r\n\r\nok\r\n--simple-boundary--"

    async def run() -> list[bytes]:
        return [
            b"".join([c async for c in chunks])
            async for _, chunks in iter_parts(stream(), BOUNDARY)
        ]

    assert asyncio.run(run()) == [b"ok"]


def test_large_chunks_pass_through_uncopied() -> None:
    # Steady-state chunks are handed on as received (zero-copy hot path).
    data = bytes(range(256)) * 4096
    chunk_list = [b"--simple-boundary\r\n\r\n", data, data, b"\r\n--simple-boundary--"]

    async def stream() -> AsyncIterator[bytes]:
        for c in chunk_list:
            yield c

    async def run() -> list[bytes]:
        out: list[bytes] = []
        async for _, chunks in iter_parts(stream(), BOUNDARY):
            out.extend([c async for c in chunks])
        return out

    out = asyncio.run(run())
    assert b"".join(out) == data * 2
    assert any(c is chunk_list[1] for c in out)


# --- Writer and round trip ---------------------------------------------------------------------


def test_new_boundary_is_random_and_valid() -> None:
    a, b = new_boundary(), new_boundary()
    assert a != b
    header = multipart_related_content_type(a, "application/dicom")
    assert parse_multipart_content_type(header)[1] == a.encode()


def test_content_type_header() -> None:
    assert multipart_related_content_type("b1", "application/dicom", "1.2.840.10008.1.2.1") == (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1; '
        'boundary="b1"'
    )
    assert multipart_related_content_type("b1", "application/octet-stream", "*") == (
        'multipart/related; type="application/octet-stream"; boundary="b1"'
    )
    type_param, boundary, params = parse_multipart_content_type(
        multipart_related_content_type("b=1", "image/jpeg", "1.2.840.10008.1.2.4.50")
    )
    assert (type_param, boundary, params["transfer-syntax"]) == (
        "image/jpeg",
        b"b=1",
        "1.2.840.10008.1.2.4.50",
    )


def test_writer_output_exact() -> None:
    body = b"".join(
        iter_multipart([({"Content-Type": "application/dicom"}, [b"ab", b"", b"c"]), ({}, [])], "B")
    )
    assert body == (
        b"--B\r\nContent-Type: application/dicom\r\n\r\nabc\r\n--B\r\n\r\n\r\n--B--\r\n"
    )
    assert b"".join(iter_multipart([], "B")) == b"--B--\r\n"


@pytest.mark.parametrize("seed", range(20))
def test_length_known_up_front_is_the_written_length(seed: int) -> None:
    # A study answered as stored carries this as its Content-Length: one byte off and the
    # client reads a cut or overlong body.
    rng = random.Random(seed)
    boundary = new_boundary()
    parts = [
        (
            {"Content-Type": f"application/dicom; transfer-syntax=1.2.{rng.randrange(10**6)}"},
            [rng.randbytes(rng.randrange(0, 300)) for _ in range(rng.randrange(0, 4))],
        )
        for _ in range(rng.randrange(0, 5))
    ]
    written = b"".join(iter_multipart(parts, boundary))
    sizes = [(headers, sum(map(len, chunks))) for headers, chunks in parts]
    assert multipart_length(sizes, boundary) == len(written)


def test_writer_is_lazy() -> None:
    pulled: list[str] = []

    def chunks(name: str) -> Iterable[bytes]:
        pulled.append(name)
        yield name.encode()

    def parts() -> Iterable[tuple[dict[str, str], Iterable[bytes]]]:
        for name in ("a", "b"):
            yield {}, chunks(name)

    out = iter_multipart(parts(), "B")
    next(out)
    assert pulled == []
    next(out)
    assert pulled == ["a"]


def test_writer_refuses_header_injection() -> None:
    with pytest.raises(ValueError, match="invalid multipart part header"):
        b"".join(iter_multipart([({"X": "a\r\nY: b"}, [b""])], "B"))


@pytest.mark.parametrize("seed", range(8))
def test_round_trip_random(seed: int) -> None:
    rng = random.Random(seed)
    boundary = new_boundary()
    parts = []
    for i in range(rng.randint(1, 12)):
        size = rng.choice([0, 1, 2, rng.randint(0, 100), rng.randint(0, 300_000)])
        data = rng.randbytes(size)
        if rng.random() < 0.3:
            # Delimiter look-alikes at random places, including at the very end.
            data += b"\r\n--" + boundary.encode()[: rng.randint(0, len(boundary) - 1)]
        chunks = [data[j : j + 9973] for j in range(0, len(data), 9973)] or [b""]
        headers = {"Content-Type": f"application/x-{i}"} if rng.random() < 0.8 else {}
        parts.append((headers, chunks, data))
    body = b"".join(iter_multipart(((h, c) for h, c, _ in parts), boundary))
    for sizes in (_random_sizes(seed, len(body)), 7, 4096):
        parsed = parse(body, sizes, boundary.encode(), default_type="application/dicom")
        assert len(parsed) == len(parts)
        for (part, data), (headers, _, expected) in zip(parsed, parts, strict=True):
            assert data == expected
            assert part.content_type == headers.get("Content-Type", "application/dicom")


# --- Real-world STOW-RS bodies ------------------------------------------------------------------


def _dicom_file(rng: random.Random) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Doe^Jane"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    # Pixel data full of CRLF and dashes, the bytes a delimiter is made of.
    ds.PixelData = (b"\r\n--0f3cf5c0" + rng.randbytes(52)) * 64
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_dicomweb_client_store_instances_body() -> None:
    # dicomweb_client's store_instances posts exactly this (web.py,
    # _http_post_multipart_application_dicom): a leading CRLF before the first delimiter, no
    # closing CRLF, and optionally the body sent in chunk_size pieces.
    rng = random.Random(7)
    files = [_dicom_file(rng) for _ in range(3)]
    content_type = (
        'multipart/related; type="application/dicom"; '
        'boundary="0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"'
    )
    body = DICOMwebClient._encode_multipart_message(files, content_type)
    type_param, boundary, _ = parse_multipart_content_type(content_type)
    for size in (1, 7, 4096, 10**6, _random_sizes(3, len(body))):
        parsed = parse(body, size, boundary, default_type=type_param)
        assert [data for _, data in parsed] == files
        assert all(part.media_type == "application/dicom" for part, _ in parsed)
    uids = [
        pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID for _, data in parse(body, 4096, boundary)
    ]
    assert len(set(uids)) == 3


def test_requests_toolbelt_style_body() -> None:
    # Many clients (requests_toolbelt, Go's mime/multipart, curl scripts) put the first delimiter
    # at offset 0 and end with "--\r\n", with extra part headers.
    data = _dicom_file(random.Random(1))
    body = (
        b"--xYzZY\r\nContent-Type: application/dicom\r\nContent-Length: "
        + str(len(data)).encode()
        + b"\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        + data
        + b"\r\n--xYzZY--\r\n"
    )
    [(part, parsed)] = parse(body, 7, b"xYzZY")
    assert parsed == data
    assert part.headers["content-length"] == str(len(data))
