"""De-identification profiles in TOML: the shipped default, extra rules per tag, and errors that
name what is wrong."""

from __future__ import annotations

import pytest

from nubis.deid.engine import deidentify
from nubis.deid.profile import ProfileError, load_default_profile, parse_profile
from nubis.tools.synth import series_datasets

KEY = b"project-key-0123456789abcdef"


def test_default_profile() -> None:
    profile = load_default_profile()
    assert profile.name == "default"
    assert "retain_longitudinal_modified_dates" in profile.options
    assert profile.burned_in.policy == "exclude"
    assert profile.shift_days == (-3650, -365)


def test_rules_override_the_table() -> None:
    profile = parse_profile(
        """
        name = "rules"
        [[rules]]
        tag = "StudyDescription"
        action = "K"
        [[rules]]
        tag = "(0008,0070)"
        action = "X"
        """
    )
    (ds,) = series_datasets("CT", n_instances=1, rows=16, columns=16)
    out, _ = deidentify(ds, profile, KEY)
    assert out.StudyDescription == ds.StudyDescription  # X in Table E.1-1, kept by the rule
    assert "Manufacturer" not in out  # not listed in the table, removed by the rule


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "not valid TOML"),
        ("version = 1", "profile.name must be a non-empty string"),
        ('name = "a"\ncolour = 1', "unknown key(s) colour"),
        ('name = "a"\noptions = ["retain_everything"]', "unknown option(s) retain_everything"),
        (
            'name = "a"\noptions = ["retain_longitudinal_full_dates", '
            '"retain_longitudinal_modified_dates"]',
            "exclude each other",
        ),
        ('name = "a"\n[dates]\nshift_days = [5, 1]', "lowest shift is above the highest"),
        (
            'name = "a"\noptions = ["retain_longitudinal_modified_dates"]\n'
            "[dates]\nshift_days = [-5, 5]",
            "must not include 0",
        ),
        ('name = "a"\n[burned_in]\npolicy = "pass"', "burned_in.policy must be one of"),
        (
            'name = "a"\n[burned_in]\npolicy = "blank"\n[[burned_in.regions]]\n'
            'manufacturer = "M"\nrows = 10\ncolumns = 10\nrectangles = [[5, 5, 10, 1]]',
            "rectangles[0] is empty or lies outside the image",
        ),
        ('name = "a"\n[[rules]]\ntag = "NoSuchKeyword"\naction = "K"', "neither a tag nor"),
        ('name = "a"\n[[rules]]\ntag = "PatientID"\naction = "Q"', "rules[0].action must be"),
        ('name = "a"\n[[rules]]\ntag = "00091001"\naction = "K"', "retain_safe_private"),
    ],
)
def test_invalid_profiles_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(text)
    assert message in caught.value.reason
    assert caught.value.http_status == 400
