from feature_store.online import Feed, feed_key, key
from feature_store import online


def test_user_input_is_escaped_in_keys():
    assert key("user", "a:b c*", "recent") == "feedloop:user:a%3Ab%20c%2A:recent"
    assert key("user", "a{b}", "recent", tag="u1") == "feedloop:{u1}:user:a%7Bb%7D:recent"  # no tag injected
    assert feed_key("seg", "F|25-34|comedy") == "feedloop:{seg}:feed:seg:F|25-34|comedy"


def test_keys_that_meet_share_a_hash_tag():
    user = "u000042"
    tags = {online.hash_tag(k) for k in online.user_view_keys(user)} | {online.hash_tag(online.user_stats_key(user))}
    assert tags == {online.user_tag(user)}
    segment_feeds = [feed_key("seg", "F|25-34|comedy"), feed_key(online.CATEGORY_FEED, "any|any|any~drama")]
    assert {online.hash_tag(k) for k in segment_feeds} == {online.SEGMENTS}
    assert {online.hash_tag(k) for k in (online.trending_key("1m"), online.popular_key())} == {online.LIVE}
    assert online.hash_tag("feedloop:catalogue") == "feedloop:catalogue"  # no tag: the whole key
    assert len({online.user_tag(f"u{n}") for n in range(5000)}) == online.USER_BUCKETS


def test_feed_round_trips_through_json_publication_first():
    feed = Feed(items=["i1", "i2"], model_version="3", scores=[0.5, 0.25], publication="17")
    assert feed.to_json().startswith('{"publication":"17"')  # the flip script reads it there
    back = Feed.from_json(feed.to_json())
    assert back == feed


def test_user_view_keys_are_the_three_key_functions():
    for user in ["u42", "a:b|c d", "ü", "", "x%2F"]:
        assert online.user_view_keys(user) == (
            online.user_profile_key(user), online.user_recent_key(user), online.feed_key("user", user))


def test_slot_groups_keep_one_group_on_a_single_redis():
    import redis

    client = redis.Redis(port=1)  # never connected
    keys = [online.user_stats_key(f"u{n}") for n in range(50)]
    assert online.slot_groups(client, keys, str) == [keys]
    assert online.slot_groups(client, [], str) == []
