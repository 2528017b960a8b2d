"""The subscription policy (stratolab/triggers/policy.py): parsing the admin's setting, the union of
default, groups and user, `{user}`, what a wildcard subscription is judged by, and the 403's wording."""

from __future__ import annotations

import json

import pytest

from stratolab.triggers.policy import DEFAULT, PolicyRefused, SubscriptionPolicy

POLICY = {
    "default": {"mqtt": ["users/{user}/", "public/"]},
    "groups": {"sensors": {"mqtt": ["sensors/"], "postgres": ["public.readings"]},
               "lab": {"nats": ["lab."], "mqtt": ["public/"]}},
    "users": {"alice": {"nats": ["*"], "postgres": ["lab."]}},
}


def allowed(policy: SubscriptionPolicy, kind: str, name: str, user: str = "bob", groups: tuple[str, ...] = ()) -> bool:
    try:
        policy.check(kind, name, user, groups)
    except PolicyRefused:
        return False
    return True


# --- parsing ----------------------------------------------------------------------------------------


def test_no_policy_is_the_default_namespaces_and_no_tables():
    policy = SubscriptionPolicy.parse(None)
    assert not policy.configured
    assert policy.allowed("mqtt", "bob") == ["users/bob/", "public/"]
    assert policy.allowed("nats", "bob") == ["users.bob.", "public."]
    assert policy.allowed("rabbitmq", "bob") == ["bob."]
    assert policy.allowed("redis", "bob") == ["bob:"]
    assert policy.allowed("postgres", "bob") == []


def test_an_empty_setting_is_no_policy():
    assert SubscriptionPolicy.from_setting("  ") == SubscriptionPolicy()


def test_a_policys_default_replaces_only_the_kinds_it_names():
    policy = SubscriptionPolicy.parse({"default": {"mqtt": ["shared/"]}})
    assert policy.configured
    assert policy.allowed("mqtt", "bob") == ["shared/"]
    assert policy.allowed("nats", "bob") == [p.replace("{user}", "bob") for p in DEFAULT["nats"]]


@pytest.mark.parametrize("raw, words", [
    ([], "default, groups and users"),
    ({"admins": {}}, "default, groups and users"),
    ({"default": []}, "default must be an object"),
    ({"default": {"kafka": ["x"]}}, "default.kafka: not a kind"),
    ({"default": {"cron": ["x"]}}, "default.cron: not a kind"),
    ({"default": {"mqtt": "users/"}}, "default.mqtt must be a list"),
    ({"default": {"mqtt": ["a", 1]}}, "default.mqtt must be a list"),
    ({"groups": []}, "groups and users are objects"),
    ({"users": "alice"}, "groups and users are objects"),
    ({"groups": {"g": {"mqtt": [None]}}}, "groups.g.mqtt"),
    ({"users": {"alice": {"redis": {}}}}, "users.alice.redis"),
])
def test_parse_errors_name_the_setting_and_the_place(raw, words):
    with pytest.raises(ValueError) as info:
        SubscriptionPolicy.parse(raw)
    assert "STRATOLAB_TRIGGERS_POLICY" in str(info.value)
    assert words in str(info.value)


def test_the_setting_may_be_json_a_json_file_or_a_yaml_file(tmp_path):
    assert SubscriptionPolicy.from_setting(json.dumps(POLICY)) == SubscriptionPolicy.parse(POLICY)
    as_json = tmp_path / "policy.json"
    as_json.write_text(json.dumps(POLICY))
    assert SubscriptionPolicy.from_setting(str(as_json)) == SubscriptionPolicy.parse(POLICY)
    as_yaml = tmp_path / "policy.yaml"
    as_yaml.write_text("users:\n  alice:\n    nats: ['*']\n")
    assert SubscriptionPolicy.from_setting(str(as_yaml)).allowed("nats", "alice")[-1] == "*"
    with pytest.raises(ValueError, match="STRATOLAB_TRIGGERS_POLICY"):
        SubscriptionPolicy.from_setting(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="not valid JSON"):
        SubscriptionPolicy.from_setting("{nope")


# --- the union --------------------------------------------------------------------------------------


def test_a_user_gets_the_union_of_default_their_groups_and_their_own_entry_without_repeats():
    policy = SubscriptionPolicy.parse(POLICY)
    assert policy.allowed("mqtt", "bob") == ["users/bob/", "public/"]
    assert policy.allowed("mqtt", "bob", ["sensors", "lab", "unknown"]) == ["users/bob/", "public/", "sensors/"]
    assert policy.allowed("nats", "bob", ["lab"]) == ["users.bob.", "public.", "lab."]
    assert policy.allowed("nats", "alice") == ["users.alice.", "public.", "*"]
    assert policy.allowed("postgres", "alice", ["sensors"]) == ["public.readings", "lab."]


def test_user_is_substituted_with_each_users_own_name():
    policy = SubscriptionPolicy.parse(POLICY)
    assert allowed(policy, "mqtt", "users/bob/door", "bob")
    assert not allowed(policy, "mqtt", "users/bob/door", "carol")
    assert allowed(policy, "mqtt", "users/carol/#", "carol")


def test_groups_grant_only_their_members():
    policy = SubscriptionPolicy.parse(POLICY)
    assert not allowed(policy, "mqtt", "sensors/+/temperature", "bob")
    assert allowed(policy, "mqtt", "sensors/+/temperature", "bob", ("sensors",))
    assert allowed(policy, "postgres", "public.readings", "bob", ("sensors",))
    assert not allowed(policy, "postgres", "public.readings", "bob", ("lab",))


def test_star_allows_everything_of_its_kind_only():
    policy = SubscriptionPolicy.parse(POLICY)
    assert allowed(policy, "nats", ">", "alice")
    assert allowed(policy, "nats", "anything.*.at.all", "alice")
    assert not allowed(policy, "mqtt", "#", "alice")


def test_kinds_without_names_are_not_governed():
    policy = SubscriptionPolicy.parse({"default": {"mqtt": []}})
    for kind in ("upload", "cron", "cloudevents"):
        policy.check(kind, "whatever", "bob")


# --- wildcards --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, ok", [
    ("users/bob/#", True), ("users/bob/+/temp", True), ("users/bob/a/b", True), ("public/news", True),
    ("#", False), ("+/bob/#", False), ("users/+/#", False), ("users/#", False), ("users/bo+", False),
    ("users/bobby/x", False), ("users/bob", False), ("public", False),
])
def test_an_mqtt_filter_is_judged_by_its_part_before_the_first_wildcard(name, ok):
    assert allowed(SubscriptionPolicy(), "mqtt", name, "bob") is ok


@pytest.mark.parametrize("name, ok", [
    ("users.bob.>", True), ("users.bob.*.temp", True), ("public.x", True),
    (">", False), ("users.*.x", False), ("users.>", False), ("*.bob.x", False),
])
def test_a_nats_subject_is_judged_by_its_part_before_the_first_wildcard(name, ok):
    assert allowed(SubscriptionPolicy(), "nats", name, "bob") is ok


def test_only_star_allows_a_bare_wildcard_even_with_an_empty_prefix():
    """An empty prefix grants nothing: '#' or '>' needs '*'."""
    policy = SubscriptionPolicy.parse({"default": {"mqtt": [""], "nats": [""]}})
    assert not allowed(policy, "mqtt", "#")
    assert not allowed(policy, "nats", ">")
    assert not allowed(policy, "mqtt", "anything")
    star = SubscriptionPolicy.parse({"default": {"mqtt": ["*"]}})
    assert allowed(star, "mqtt", "#")


def test_queues_and_streams_are_plain_prefixes():
    policy = SubscriptionPolicy()
    assert allowed(policy, "rabbitmq", "bob.uploads")
    assert not allowed(policy, "rabbitmq", "alice.uploads")
    assert allowed(policy, "redis", "bob:readings")
    assert not allowed(policy, "redis", "bobby:readings")


def test_a_table_entry_grants_that_table_and_a_schema_entry_all_of_its_tables():
    """"public.readings" must not also grant "public.readings_private": tables are names, not prefixes
    (a schema written with its dot is the prefix of its tables)."""
    policy = SubscriptionPolicy.parse({"default": {"postgres": ["public.readings", "lab."]}})
    assert allowed(policy, "postgres", "public.readings")
    assert not allowed(policy, "postgres", "public.readings_private")
    assert not allowed(policy, "postgres", "public.readings2")
    assert allowed(policy, "postgres", "lab.anything")
    assert not allowed(policy, "postgres", "laboratory.x")


# --- refusals ---------------------------------------------------------------------------------------


def test_the_403_names_the_default_policy_and_what_it_allows():
    with pytest.raises(PolicyRefused) as info:
        SubscriptionPolicy().check("mqtt", "#", "bob")
    error = info.value
    assert error.status == 403
    text = str(error)
    assert "'#'" in text and "bob" in text
    assert "default trigger policy" in text and "STRATOLAB_TRIGGERS_POLICY" in text
    assert "'users/bob/', 'public/'" in text


def test_the_403_names_the_admins_policy_and_says_nothing_is_allowed_when_nothing_is():
    policy = SubscriptionPolicy.parse({"default": {"postgres": []}})
    with pytest.raises(PolicyRefused) as info:
        policy.check("postgres", "public.t", "bob", what="table")
    text = str(info.value)
    assert text.startswith("table 'public.t'")
    assert "admin's trigger policy (STRATOLAB_TRIGGERS_POLICY)" in text
    assert "it allows the tables (or every table of the schemas ending in '.') nothing" in text
