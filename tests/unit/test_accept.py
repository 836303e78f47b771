"""DICOMweb Accept parsing and negotiation (RFC 9110 12.5.1; PS3.18 8.3.3.1, 8.7.3, 8.7.5)."""

from __future__ import annotations

import pytest

from nubis.errors import BadRequest, NotAcceptable
from nubis.web.dicomweb.accept import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    Choice,
    MediaRange,
    Offer,
    accept_from_request,
    bulkdata_offers,
    frame_offers,
    instance_offers,
    metadata_offers,
    negotiate,
    parse_accept,
    parse_media_type,
    rendered_offers,
    split_header_list,
)

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
JP2_LOSSLESS = "1.2.840.10008.1.2.4.90"
JLS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JXL_LOSSLESS = "1.2.840.10008.1.2.4.110"

INSTANCES = instance_offers((EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2", JPEG_BASELINE))
METADATA = metadata_offers()
FRAMES = frame_offers([JPEG_BASELINE, JPEG_LOSSLESS, JP2_LOSSLESS, JLS_LOSSLESS, JXL_LOSSLESS])
RENDERED = rendered_offers()


def choose(accept: str | None, offers: tuple[Offer, ...]) -> Choice:
    return negotiate(parse_accept(accept), offers)


# --- Parsing ------------------------------------------------------------------------------------


def test_absent_or_empty_accept_is_anything() -> None:
    for header in (None, "", "  ", " , ,"):
        assert parse_accept(header) == [MediaRange("*", "*", {}, 1.0)]


def test_parse_dicom_ranges() -> None:
    ranges = parse_accept(
        'Multipart/Related; Type="Application/DICOM"; transfer-syntax=1.2.840.10008.1.2.4.50;'
        " q=0.9, application/dicom+json"
    )
    assert ranges == [
        MediaRange("application", "dicom+json", {}, 1.0),
        MediaRange(
            "multipart",
            "related",
            {"type": "application/dicom", "transfer-syntax": JPEG_BASELINE},
            0.9,
        ),
    ]


def test_sort_by_weight_then_specificity_then_order() -> None:
    ranges = parse_accept("*/*;q=0.5, image/*, image/png, text/plain;q=0.5, image/jpeg;a=b")
    assert [str(r) for r in ranges] == [
        "image/jpeg; a=b",
        "image/png",
        "image/*",
        "text/plain; q=0.5",
        "*/*; q=0.5",
    ]


def test_commas_inside_quotes_and_joined_header_lines() -> None:
    header = 'multipart/related; type="a/b, c"; x="q\\"uote", image/png' + ", " + "image/gif"
    assert split_header_list(header) == [
        'multipart/related; type="a/b, c"; x="q\\"uote"',
        "image/png",
        "image/gif",
    ]
    ranges = parse_accept(header)
    assert ranges[0].params == {"type": "a/b, c", "x": 'q"uote'}
    assert [r.media_type for r in ranges] == ["multipart/related", "image/png", "image/gif"]


def test_unquoted_type_parameter_is_accepted() -> None:
    # Common in the wild although "/" is not a token character.
    [media_range] = parse_accept("multipart/related; type=application/dicom; transfer-syntax=*")
    assert media_range.params == {"type": "application/dicom", "transfer-syntax": "*"}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("json", "not of the form type/subtype"),
        ("image/", "not of the form type/subtype"),
        ("/png", "not of the form type/subtype"),
        ("*/json", "wildcard type but a concrete subtype"),
        ("image/png; q=1.5", "not between 0 and 1"),
        ("image/png; q=abc", "not between 0 and 1"),
        ("image/png; q=-0.1", "not between 0 and 1"),
        ("image/png; q=0.1234", "not between 0 and 1"),
        ("image/png; level", "has no value"),
        ("image/png; a=", "has an empty value"),
        ('image/png; a="b', "unterminated quoted string"),
        ('image/png; a="b" c', "unexpected"),
        ("image/png; a b=c", "not a token"),
    ],
)
def test_malformed_accept(header: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_accept(header)


def test_parse_media_type_keeps_case_of_uids_and_boundaries() -> None:
    assert parse_media_type('multipart/related; boundary="AbC"; Type="Image/JPEG"') == (
        "multipart",
        "related",
        {"boundary": "AbC", "type": "image/jpeg"},
    )


def test_query_parameter_overrides_header() -> None:
    assert accept_from_request("image/png", "image/jpeg") == [MediaRange("image", "jpeg", {}, 1.0)]
    assert accept_from_request("image/png", None) == [MediaRange("image", "png", {}, 1.0)]
    assert accept_from_request("image/png", "") == [MediaRange("image", "png", {}, 1.0)]
    assert accept_from_request(None, None) == [MediaRange("*", "*", {}, 1.0)]
    with pytest.raises(BadRequest):
        accept_from_request("image/png", "garbage")


# --- Instances (PS3.18 8.7.3.5, Table 8.7.3-3) -------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "transfer_syntax"),
    [
        (None, EXPLICIT_VR_LITTLE_ENDIAN),
        ("*/*", EXPLICIT_VR_LITTLE_ENDIAN),
        ("multipart/related", EXPLICIT_VR_LITTLE_ENDIAN),
        ("multipart/*", EXPLICIT_VR_LITTLE_ENDIAN),
        ('multipart/related; type="application/dicom"', EXPLICIT_VR_LITTLE_ENDIAN),
        ('multipart/related; type="application/*"', EXPLICIT_VR_LITTLE_ENDIAN),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', "*"),
        (
            f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}',
            JPEG_BASELINE,
        ),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.3, '
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2',
            "1.2.840.10008.1.2",
        ),
        (
            f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}; q=0.5,'
            ' multipart/related; type="application/dicom"; transfer-syntax=*',
            "*",
        ),
        (f"multipart/related; transfer-syntax={JPEG_BASELINE}", JPEG_BASELINE),
    ],
)
def test_instances(accept: str | None, transfer_syntax: str) -> None:
    assert choose(accept, INSTANCES) == Choice(
        "multipart/related", "application/dicom", transfer_syntax
    )


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.3',
        'multipart/related; type="application/octet-stream"',
        "application/dicom+json",
        "image/*",
        "*/*; q=0",
        'multipart/related; type="application/dicom"; q=0',
        'multipart/related; type="application/dicom"; q=0, */*',
    ],
)
def test_instances_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        choose(accept, INSTANCES)
    assert "none of the requested media types" in info.value.reason
    assert 'multipart/related; type="application/dicom"' in info.value.reason


def test_not_acceptable_reason_names_request_and_offers() -> None:
    with pytest.raises(NotAcceptable) as info:
        choose("image/png, text/html;q=0.5", METADATA)
    assert info.value.reason == (
        "none of the requested media types (image/png, text/html; q=0.5) can be produced by "
        "this resource; it offers: application/dicom+json"
    )


def test_instance_default_is_explicit_vr_little_endian_whatever_the_order() -> None:
    offers = instance_offers(
        sorted({"1.2.840.10008.1.2", JPEG_BASELINE, EXPLICIT_VR_LITTLE_ENDIAN})
    )
    assert offers[0].default_transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN
    assert offers[0].transfer_syntaxes[-1] == "*"
    assert choose(None, offers).transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN
    assert instance_offers([JPEG_BASELINE], as_stored=False)[0].transfer_syntaxes == (
        JPEG_BASELINE,
    )


def test_star_without_as_stored_gets_default() -> None:
    offers = instance_offers(as_stored=False)
    choice = choose('multipart/related; type="application/dicom"; transfer-syntax=*', offers)
    assert choice.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN


# --- Metadata ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, "application/dicom+json"),
        ("*/*", "application/dicom+json"),
        ("application/*", "application/dicom+json"),
        ("application/dicom+json", "application/dicom+json"),
        ("application/dicom+json; charset=utf-8", "application/dicom+json"),
        ("application/json", "application/json"),
        ("application/dicom+xml;q=1, application/json;q=0.2", "application/json"),
        ("text/html, application/xhtml+xml, */*;q=0.8", "application/dicom+json"),
    ],
)
def test_metadata(accept: str | None, media_type: str) -> None:
    assert choose(accept, METADATA) == Choice(media_type, None, None)


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/dicom+xml"',
        "application/dicom+json; charset=iso-8859-1",
        "application/dicom+json;q=0, application/json;q=0",
    ],
)
def test_metadata_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        choose(accept, METADATA)


# --- Frames and bulk data (Tables 8.7.3-4, 8.7.3-5) ---------------------------------------------


@pytest.mark.parametrize(
    ("accept", "part_type", "transfer_syntax"),
    [
        (None, "application/octet-stream", EXPLICIT_VR_LITTLE_ENDIAN),
        ("multipart/related", "application/octet-stream", EXPLICIT_VR_LITTLE_ENDIAN),
        (
            'multipart/related; type="application/octet-stream"',
            "application/octet-stream",
            EXPLICIT_VR_LITTLE_ENDIAN,
        ),
        (
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            "application/octet-stream",
            "*",
        ),
        ('multipart/related; type="image/jpeg"', "image/jpeg", JPEG_BASELINE),
        (
            f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_LOSSLESS}',
            "image/jpeg",
            JPEG_LOSSLESS,
        ),
        ('multipart/related; type="image/jp2"', "image/jp2", JP2_LOSSLESS),
        ('multipart/related; type="image/jls"', "image/jls", JLS_LOSSLESS),
        ('multipart/related; type="image/jxl"', "image/jxl", JXL_LOSSLESS),
        ('multipart/related; type="image/*"', "image/jpeg", JPEG_BASELINE),
        (
            'multipart/related; type="image/*", multipart/related; type="image/jpeg"; q=0.1',
            "image/jls",
            JLS_LOSSLESS,
        ),
        (
            'multipart/related; type="image/jpeg"; q=0.5, '
            'multipart/related; type="image/jls"; q=0.9',
            "image/jls",
            JLS_LOSSLESS,
        ),
        (
            'multipart/related; type="image/jpeg"; transfer-syntax=1.2.3, '
            'multipart/related; type="application/octet-stream"; q=0.1',
            "application/octet-stream",
            EXPLICIT_VR_LITTLE_ENDIAN,
        ),
        (
            'multipart/related; type="image/jpeg"; transfer-syntax=*',
            "image/jpeg",
            JPEG_BASELINE,
        ),
    ],
)
def test_frames(accept: str | None, part_type: str, transfer_syntax: str) -> None:
    assert choose(accept, FRAMES) == Choice("multipart/related", part_type, transfer_syntax)


def test_frames_default_transfer_syntax_must_be_offered() -> None:
    # JPEG frames are only available losslessly (e.g. stored so): a bare type= cannot be met
    # with the table default, but the offer's own first syntax is used.
    offers = frame_offers([JPEG_LOSSLESS], native=False)
    assert offers == (
        Offer("multipart/related", part_type="image/jpeg", transfer_syntaxes=(JPEG_LOSSLESS,)),
    )
    assert choose('multipart/related; type="image/jpeg"', offers).transfer_syntax == JPEG_LOSSLESS
    with pytest.raises(NotAcceptable):
        choose(
            'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50', offers
        )
    with pytest.raises(NotAcceptable):
        choose('multipart/related; type="application/octet-stream"', offers)


def test_frame_exclusions() -> None:
    with pytest.raises(NotAcceptable):
        choose('multipart/related; type="image/jpeg", */*;q=0', frame_offers([], native=True))
    choice = choose(
        'multipart/related; type="application/octet-stream"; q=0, multipart/related', FRAMES
    )
    assert choice == Choice("multipart/related", "image/jpeg", JPEG_BASELINE)


def test_bulkdata() -> None:
    assert choose(None, bulkdata_offers()) == Choice(
        "multipart/related", "application/octet-stream", EXPLICIT_VR_LITTLE_ENDIAN
    )
    with pytest.raises(NotAcceptable):
        choose('multipart/related; type="image/jpeg"', bulkdata_offers())


# --- Rendered (PS3.18 8.7.4) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, "image/jpeg"),
        ("*/*", "image/jpeg"),
        ("image/*", "image/jpeg"),
        ("image/png", "image/png"),
        ("image/gif, image/png", "image/gif"),
        ("image/gif;q=0.4, image/png;q=0.5", "image/png"),
        ("image/*, image/jpeg;q=0", "image/png"),
        ("image/*, image/jpeg;q=0.1", "image/png"),
        ("image/webp, image/*;q=0.8", "image/jpeg"),
        # Browser default Accept.
        ("image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", "image/jpeg"),
    ],
)
def test_rendered(accept: str | None, media_type: str) -> None:
    assert choose(accept, RENDERED) == Choice(media_type, None, None)


@pytest.mark.parametrize("accept", ["image/webp", "application/*", "*/*;q=0", "image/*;q=0, */*"])
def test_rendered_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        choose(accept, RENDERED)


def test_offer_validation() -> None:
    with pytest.raises(ValueError, match="part_type"):
        Offer("multipart/related")
    with pytest.raises(ValueError, match="default transfer syntax"):
        Offer("multipart/related", part_type="application/dicom", transfer_syntaxes=("*",))
