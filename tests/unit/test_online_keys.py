from feature_store.online import Feed, feed_key, key
from feature_store import online


def test_user_input_is_escaped_in_keys():
    assert key("user", "a:b c*", "recent") == "feedloop:user:a%3Ab%20c%2A:recent"
    assert feed_key("seg", "F|25-34|comedy") == "feedloop:feed:seg:F|25-34|comedy"


def test_feed_round_trips_through_json():
    feed = Feed(items=["i1", "i2"], model_version="3", scores=[0.5, 0.25], publication="17")
    back = Feed.from_json(feed.to_json())
    assert back == feed


def test_user_view_keys_are_the_three_key_functions():
    for user in ["u42", "a:b|c d", "ü", "", "x%2F"]:
        assert online.user_view_keys(user) == (
            online.user_profile_key(user), online.user_recent_key(user), online.feed_key("user", user))
