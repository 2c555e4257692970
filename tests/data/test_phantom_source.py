import pytest

from sae_rad_ext.data.phantom.generator import parse_phantom_source


def test_phantom_source_both_spellings_and_types():
    assert parse_phantom_source("phantom:40,seed=1,image_size=128") == {"n": 40, "seed": 1, "image_size": 128}
    assert parse_phantom_source("phantom:n=40,lateral_prob=0.5") == {"n": 40, "lateral_prob": 0.5}
    assert parse_phantom_source("phantom:") == {}


@pytest.mark.parametrize("bad", ["phantom:n=x", "phantom:foo=1", "phantom:seed=", "mimic:/data"])
def test_phantom_source_errors_name_the_part_and_the_form(bad):
    with pytest.raises(ValueError, match="phantom:N"):
        parse_phantom_source(bad)
