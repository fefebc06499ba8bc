"""Event schema v1 in the JVM: :data:`feedloop.events.RULES` compiled to Spark SQL expressions.

The streaming sink parses each Kafka value with ``from_json`` into a
``map<string, variant>`` (a variant keeps the JSON type, so ``"5"`` and ``5``
stay apart, as they do for the Python validator) and into a typed struct (the
values), and evaluates the same rules, in the same order, as one ``CASE``
expression. No row goes through Python.

:func:`validated` is a pure transform: it takes a DataFrame with a binary
``value`` column and adds the event columns, ``extra``, ``reason`` (null for a
valid event, else ``"<field>: <message>"``) and ``raw`` (the value, for rejected
rows only). ``tests/unit/test_event_rules.py`` checks that it agrees with
:func:`feedloop.events.validate` on a generated corpus.

Known difference: Jackson stops reading at the end of the first JSON value, so a
JSON object followed by other bytes (``{...} junk``) passes here and is rejected
by the Python validator (the API's path). Producers that serialise a JSON object
per record never send that.
"""

from __future__ import annotations

from feedloop.events import (
    BLANK_PATTERN, FIELDS, MAX_EVENT_BYTES, MAX_FUTURE_MS, RECORD_EMPTY, RECORD_NOT_JSON, RECORD_NOT_OBJECT, RECORD_NOT_UTF8,
    RECORD_TOO_LARGE, RULES, SCHEMA_VERSION, Rule,
)

# Jackson options that make Spark's JSON parser as strict as Python's json module.
JSON_OPTIONS = {"allowSingleQuotes": "false", "mode": "PERMISSIVE"}
STRING, INTEGER, NULL = "STRING", "BIGINT", "VOID"
KIND_ABSENT, KIND_STRING, KIND_INTEGER, KIND_OTHER = 0, 1, 2, 3
INT_FIELDS = ("ts", "dwell_ms", "position")
OUTPUT_TYPES = {"ts": "bigint", "dwell_ms": "bigint", "position": "int", "schema_version": "int"}


def _java_full(pattern: str) -> str:
    """A regex that must match the whole string under Java's ``find()`` (what ``rlike`` runs)."""
    return f"^(?:{pattern})\\z"


class _Field:
    """Column names of one field's parsed parts: its variant, JSON type, string and integer value."""

    def __init__(self, name: str):
        self.v, self.t, self.s, self.i = (f"_{part}_{name}" for part in ("v", "t", "s", "i"))

    def kind(self):
        """The JSON type as a small integer (compared much faster than type names)."""
        from pyspark.sql import functions as F

        t = F.col(self.t)
        return (F.when(t == STRING, F.lit(KIND_STRING)).when(t == INTEGER, F.lit(KIND_INTEGER))
                .when(t.isNull() | (t == NULL), F.lit(KIND_ABSENT)).otherwise(F.lit(KIND_OTHER)))

    def present(self):
        from pyspark.sql import functions as F

        return F.col(self.k) != KIND_ABSENT

    def is_string(self):
        from pyspark.sql import functions as F

        return F.col(self.k) == KIND_STRING

    def is_int(self):
        from pyspark.sql import functions as F

        return F.col(self.k) == KIND_INTEGER

    @property
    def k(self) -> str:
        return self.t.replace("_t_", "_k_", 1)

    def repr(self):
        """Python's repr of the value, near enough for a message."""
        from pyspark.sql import functions as F

        return (F.when(~self.present(), F.lit("None"))
                .when(self.is_string(), F.concat(F.lit("'"), F.col(self.s), F.lit("'")))
                .when(F.col(self.t) == "BOOLEAN", F.initcap(F.to_json(F.col(self.v))))
                .otherwise(F.to_json(F.col(self.v))))


def _passes(rule: Rule, f: _Field, now_ms):
    """The rule as a boolean Column (never null): true when the event passes it."""
    from pyspark.sql import functions as F

    s, i = F.col(f.s), F.col(f.i)
    absent = ~f.present()
    kind = rule.kind
    if kind == "one_of":
        ok = f.is_string() & s.isin(*rule.values)
    elif kind == "required":
        ok = f.present()
    elif kind == "non_blank":
        ok = f.is_string() & ~s.rlike(_java_full(BLANK_PATTERN))
    elif kind == "string":
        ok = absent | (f.is_string() & F.char_length(s).between(1, rule.max_len))
    elif kind == "pattern":
        ok = absent | (f.is_string() & s.rlike(_java_full(rule.pattern)))
    elif kind == "is_string":
        ok = absent | f.is_string()
    elif kind == "integer":
        ok = f.is_int() & i.between(F.lit(rule.low), F.lit(rule.high))
        ok = (absent | ok) if not rule.required else ok
    elif kind == "not_future":
        ok = absent | ~f.is_int() | (i <= now_ms + F.lit(MAX_FUTURE_MS))
    else:
        raise ValueError(f"unknown rule kind {kind!r}")
    return F.coalesce(ok, F.lit(False))


def _applies(rule: Rule, event_type):
    from pyspark.sql import functions as F

    cond = F.lit(True)
    if rule.when:
        cond = cond & event_type.isin(*rule.when)
    if rule.unless:
        cond = cond & ~event_type.isin(*rule.unless)
    return F.coalesce(cond, F.lit(False))


def _message(rule: Rule, fields: dict[str, _Field]):
    from pyspark.sql import functions as F

    parts = rule.message.replace("{event_type}", "\0event_type\0").replace("{value}", "\0value\0").split("\0")
    columns = []
    for part in parts:
        if part == "event_type":
            columns.append(F.col(fields["event_type"].s))
        elif part == "value":
            columns.append(fields[rule.field].repr())
        elif part:
            columns.append(F.lit(part))
    return F.concat(F.lit(f"{rule.field}: "), *columns)


def reason_column(fields: dict[str, _Field], value: str = "value", now_ms=None):
    """``"<field>: <message>"`` of the first failing rule, or null for a valid event."""
    from pyspark.sql import functions as F

    now = now_ms if now_ms is not None else F.unix_millis(F.current_timestamp())
    raw = F.col(value)
    not_json = F.expr(f"try_parse_json(cast({value} AS string))").isNull()
    event_type = F.col(fields["event_type"].s)
    reason = (
        F.when(raw.isNull(), F.lit(f"record: {RECORD_EMPTY}"))
        .when(F.octet_length(raw) > MAX_EVENT_BYTES, F.lit(f"record: {RECORD_TOO_LARGE}"))
        .when(~F.expr(f"is_valid_utf8({value})"), F.lit(f"record: {RECORD_NOT_UTF8}"))
        # rare rows only: the second parse tells bad JSON from JSON that is not an object
        .when(F.col("_m").isNull(), F.when(not_json, F.lit(f"record: {RECORD_NOT_JSON}"))
              .otherwise(F.lit(f"record: {RECORD_NOT_OBJECT}")))
    )
    for rule in RULES:
        reason = reason.when(_applies(rule, event_type) & ~_passes(rule, fields[rule.field], now),
                             _message(rule, fields))
    return reason


def validated(df, value: str = "value", now_ms: int | None = None):
    """Add the event columns, ``extra``, ``reason`` and ``raw`` to ``df`` (which has a binary ``value``).

    ``now_ms`` fixes "now" for the future-time rule (tests); by default it is the
    micro-batch's timestamp, the same for a replayed batch.
    """
    from pyspark.sql import functions as F

    names = sorted({r.field for r in RULES} | set(FIELDS))
    fields = {name: _Field(name) for name in names}
    text = F.col(value).cast("string")
    parseable = F.col(value).isNotNull() & (F.octet_length(F.col(value)) <= MAX_EVENT_BYTES) \
        & F.expr(f"is_valid_utf8({value})")
    # Two parses, both in the JVM: a map of variants gives each field's JSON type (and
    # the unknown fields), a typed struct gives the values. Measured reason: reading the
    # values out of the variants (variant_get builds a Cast per call) took 3.3 s for
    # 400,000 events on two cores, the typed parse 1.4 s.
    typed = ", ".join(f"{n} {'bigint' if n in INT_FIELDS or n == 'schema_version' else 'string'}" for n in fields)
    parsed = df.select(
        "*",
        F.when(parseable, F.from_json(text, "map<string,variant>", JSON_OPTIONS)).alias("_m"),
        F.when(parseable, F.from_json(text, typed, JSON_OPTIONS)).alias("_j"),
    )
    parsed = parsed.select("*", *(F.try_element_at(F.col("_m"), F.lit(n)).alias(f.v) for n, f in fields.items()))
    parsed = parsed.select("*", *(F.expr(f"schema_of_variant({f.v})").alias(f.t) for f in fields.values()))
    parsed = parsed.select("*", *(f.kind().alias(f.k) for f in fields.values()))
    parsed = parsed.select(
        "*",
        *(F.when(f.is_string(), F.col(f"_j.{n}")).alias(f.s) for n, f in fields.items()),
        *(F.when(f.is_int(), F.col(f"_j.{n}")).alias(f.i)
          for n, f in fields.items() if n in INT_FIELDS or n == "schema_version"),
    )
    now = F.lit(now_ms) if now_ms is not None else None
    reason = reason_column(fields, value, now)
    extra = F.expr(
        "transform_values(map_filter(_m, (k, v) -> NOT array_contains(array({}), k)), "
        "(k, v) -> CASE WHEN schema_of_variant(v) = 'STRING' THEN variant_get(v, '$', 'string') "
        "ELSE to_json(v) END)".format(", ".join(f"'{n}'" for n in FIELDS))
    )
    event_columns = []
    for name in FIELDS:
        if name == "schema_version":
            column = F.lit(SCHEMA_VERSION).cast("int")
        elif name in INT_FIELDS:
            column = F.col(fields[name].i).try_cast(OUTPUT_TYPES[name])  # never raises (ANSI mode)
        else:
            column = F.col(fields[name].s)
        event_columns.append(column.alias(name))
    keep = [c for c in df.columns if c != value]
    with_reason = parsed.select(*keep, *event_columns, extra.alias("extra"), reason.alias("reason"), F.col(value))
    ok = F.col("reason").isNull()
    return with_reason.select(  # a rejected record keeps no field values, only its reason and raw bytes
        *keep, *(F.when(ok, F.col(n)).alias(n) for n in FIELDS), F.when(ok, F.col("extra")).alias("extra"), "reason",
        F.when(F.col("reason").isNotNull(), F.coalesce(F.col(value), F.lit(b"").cast("binary"))).alias("raw"),
    )
