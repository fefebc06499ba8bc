from feature_store.segments import age_band, fallbacks, segment_of


def test_segment_is_gender_age_band_top_interest():
    assert segment_of("F", 29, ["comedy", "drama"]) == "F|25-34|comedy"
    assert segment_of("male", 17, ["Action"]) == "M|<18|action"


def test_unknown_parts_become_any():
    assert segment_of(None, None, []) == "any|any|any"
    assert age_band(-3) == "any"


def test_fallbacks_go_from_specific_to_global():
    assert fallbacks("F|25-34|comedy") == ["F|25-34|comedy", "F|25-34|any", "F|any|any", "any|any|any"]
    assert fallbacks("any|any|any") == ["any|any|any"]
