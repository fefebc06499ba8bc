"""An in-memory search index of one catalogue version: SQLite FTS5, BM25 over title and keywords.

Built by each API worker from the published catalogue (:mod:`serving.catalogues`), never
written to: a search is answered by the index of exactly one catalogue version, so it
never mixes two catalogues. SQLite is the standard library's (FTS5 compiled in), so the
API gains no dependency and stays free of TensorFlow and Spark.

* **Relevance**: FTS5's ``bm25`` with the title weighted :data:`TITLE_WEIGHT` times a
  keyword, so a title match ranks above a keyword-only match.
* **Typos**: a query word of :data:`MIN_TYPO_LEN` letters or more (3) that is not in the
  index's vocabulary matches the vocabulary words one edit away (deletion, insertion,
  substitution or transposition of one letter): ``comdy`` finds ``comedy``. Numbers are
  never corrected (``981`` must not find ``91``).
* **Prefixes**: the last query word also matches the words it begins (search as you type).
* Every word must match (AND); a word that matches nothing, even one edit away, gives no hits.
* **Facets**: ``categories`` filters, and with ``facets=True`` a text search also counts
  the hits per category (before the category filter, as shops show them; it costs a second
  pass over the hits, so it is asked for); ``min_price``/``max_price`` bound the price
  (inclusive; an item without a price matches no bound).
* **Cost**: ranking is computed for every hit (FTS5 has no early termination), about 1 µs
  per hit on this machine: a query matching a quarter of a 100,000-item catalogue costs
  ~25 ms, a title ~1-3 ms. The last :data:`CACHE_SIZE` answers are kept (per version).
* **Order**: relevance (then item id) by default with a text query, ``price`` (cheapest
  first, then item id; no price last) or ``price_desc`` on request.
"""

from __future__ import annotations

import math
import re
import sqlite3
import unicodedata
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from feature_store.catalogue import category_codes

TITLE_WEIGHT, KEYWORD_WEIGHT = 4.0, 1.0
MIN_TYPO_LEN = 3
MIN_PREFIX_LEN = 2
MAX_QUERY_WORDS = 8
MAX_VARIANTS = 20  # corrections kept per word, so a short word cannot blow up the query
SORTS = ("relevance", "price", "price_desc")
CACHE_SIZE = 2048
UNION_CACHE = 64
LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
# FTS5's unicode61 tokenizer: letters and digits are token characters, everything else separates.
_WORD = re.compile(r"[^\W_]+")

_SCHEMA = (
    "CREATE TABLE items(id INTEGER PRIMARY KEY, item_id TEXT NOT NULL, category TEXT NOT NULL, price REAL, doc TEXT)",
    "CREATE VIRTUAL TABLE fts USING fts5(title, keywords, content='', prefix='2 3', tokenize='unicode61')",
)
_INDEXES = (
    "CREATE INDEX items_price ON items(price, item_id)",
    "CREATE INDEX items_category ON items(category, price, item_id)",
)
_ORDER = {
    "relevance": "score, i.item_id",
    "price": "i.price IS NULL, i.price, i.item_id",
    "price_desc": "i.price IS NULL, i.price DESC, i.item_id",
}


def words(text: str) -> list[str]:
    """The words of ``text`` as FTS5's unicode61 tokenizer sees them: lower case, no diacritics."""
    plain = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(ch for ch in plain if not unicodedata.combining(ch))
    return _WORD.findall(plain)


def one_edit(word: str) -> set[str]:
    """Every string one deletion, transposition, substitution or insertion away from ``word``."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    out = {a + b[1:] for a, b in splits if b}
    out |= {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    out |= {a + c + b[1:] for a, b in splits if b for c in LETTERS}
    out |= {a + c + b for a, b in splits for c in LETTERS}
    out.discard(word)
    return out


def _quoted(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def completions(prefix: str, terms: list[str], most: int = MAX_VARIANTS) -> list[str] | None:
    """The vocabulary words (``terms``, sorted) that start with ``prefix``; None when more than ``most``."""
    out = []
    for n in range(bisect_left(terms, prefix), len(terms)):
        if not terms[n].startswith(prefix):
            break
        if len(out) == most:
            return None
        out.append(terms[n])
    return out


def alternatives(word: str, vocabulary: set[str] | frozenset[str], last: bool,
                 terms: list[str] | None = None) -> list[str]:
    """The FTS5 terms one query word may match: itself when indexed, else its corrections; and,
    when it is the last word, the words it begins (named one by one when there are few: an FTS5
    prefix query merges every matching word's postings, which costs milliseconds on a common
    word; ``"word"*`` when there are many)."""
    found = [word] if word in vocabulary else []
    prefix_query = None
    if last and len(word) >= MIN_PREFIX_LEN:
        more = completions(word, terms if terms is not None else sorted(vocabulary))
        if more is None:
            prefix_query = _quoted(word) + "*"
        else:
            found += [w for w in more if w != word]
    if not found and prefix_query is None and len(word) >= MIN_TYPO_LEN and not word.isdigit():
        found = sorted(one_edit(word) & vocabulary)[:MAX_VARIANTS]
    return [_quoted(w) for w in found] + ([prefix_query] if prefix_query else [])


def match_expression(text: str, vocabulary: set[str] | frozenset[str], terms: list[str] | None = None) -> str | None:
    """The FTS5 MATCH expression of a query (every word must match), or None when a word
    matches nothing at all (then no item can match)."""
    found = words(text)[:MAX_QUERY_WORDS]
    groups = []
    for n, word in enumerate(found):
        alts = alternatives(word, vocabulary, n == len(found) - 1, terms)
        if not alts:
            return None
        groups.append("(" + " OR ".join(alts) + ")")
    return " AND ".join(groups) or None


@dataclass
class Hits:
    items: list[dict[str, Any]]
    total: int
    facets: dict[str, int] | None = None


@dataclass
class SearchIndex:
    """The index of one catalogue version (``version``), and the category of every item
    (the category-filtered feeds read it)."""

    version: str
    db: sqlite3.Connection = field(repr=False)
    vocabulary: frozenset[str] = field(repr=False)
    category_of: dict[str, str] = field(repr=False)
    categories: frozenset[str] = frozenset()
    # by rowid (0 unused): the facet counts are taken in Python over the matching rowids,
    # which costs a third of a GROUP BY over the join
    members: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)  # category -> item ids
    row_category: list[str] = field(default_factory=list, repr=False)
    row_price: list[float | None] = field(default_factory=list, repr=False)
    cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    terms: list[str] = field(default_factory=list, repr=False)  # the vocabulary, sorted
    unions: OrderedDict = field(default_factory=OrderedDict, repr=False)
    codes: dict[str, int] = field(default_factory=dict, repr=False)  # catalogue.category_codes
    filters: OrderedDict = field(default_factory=OrderedDict, repr=False)  # category_filter's

    @classmethod
    def build(cls, version: str, docs: Iterable[str | bytes | Mapping[str, Any]]) -> "SearchIndex":
        """An index of the stored item documents (JSON, as in ``catalogue:<v>:items``, or dicts)."""
        db = sqlite3.connect(":memory:", check_same_thread=False)
        for statement in _SCHEMA:
            db.execute(statement)
        rows, seen = [], {}
        for raw in docs:
            doc = orjson.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw)
            item = str(doc["item_id"])
            if item in seen:  # HSCAN may return an entry twice
                continue
            seen[item] = str(doc.get("category") or "any").lower()
            rows.append((len(rows) + 1, item, seen[item], doc.get("price"), orjson.dumps(doc).decode(),
                         str(doc.get("title") or ""), " ".join(doc.get("keywords") or ())))
        db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", [r[:5] for r in rows])
        db.executemany("INSERT INTO fts(rowid, title, keywords) VALUES (?, ?, ?)", [(r[0], r[5], r[6]) for r in rows])
        db.execute("INSERT INTO fts(fts, rank) VALUES ('rank', ?)", (f"bm25({TITLE_WEIGHT}, {KEYWORD_WEIGHT})",))
        for statement in _INDEXES:
            db.execute(statement)
        db.execute("CREATE VIRTUAL TABLE vocab USING fts5vocab(fts, 'row')")
        vocabulary = frozenset(term for (term,) in db.execute("SELECT term FROM vocab"))
        db.commit()
        members: dict[str, set[str]] = {}
        for item, category in seen.items():
            members.setdefault(category, set()).add(item)
        return cls(version, db, vocabulary, seen, categories=frozenset(members), terms=sorted(vocabulary),
                   members={c: frozenset(m) for c, m in members.items()}, codes=category_codes(members),
                   row_category=[""] + [r[2] for r in rows], row_price=[None] + [r[3] for r in rows])

    def __len__(self) -> int:
        return len(self.category_of)

    def members_of(self, categories: Iterable[str]) -> frozenset[str]:
        """The item ids of these categories (lower case), as one set: what the filtered feeds test
        each candidate against (one probe of a set the size of the categories, where a lookup in
        the whole catalogue's map costs a cache miss on a large catalogue). The last
        :data:`UNION_CACHE` sets are kept."""
        key = tuple(sorted(set(categories)))
        found = self.unions.get(key)
        if found is None:
            if len(key) == 1:
                found = self.members.get(key[0], frozenset())
            else:
                found = frozenset().union(*(self.members.get(c, ()) for c in key))
            self.unions[key] = found
            if len(self.unions) > UNION_CACHE:
                self.unions.popitem(last=False)
        return found

    def codes_of(self, categories: Iterable[str]) -> frozenset[int]:
        """The numbers of these categories (lower case) in this version, as published feeds carry
        them (:func:`feature_store.catalogue.category_codes`)."""
        return frozenset(self.codes[c] for c in categories if c in self.codes)

    def category_filter(self, categories: Sequence[str]) -> dict[str, Any] | None:
        """What a filtered feed tests its candidates against, for these categories (lower case,
        sorted, each once): ``allowed`` (:meth:`members_of`), ``codes`` (:meth:`codes_of`) and
        ``catalogue`` (this version), as :func:`serving.filtered.resolve_filtered` takes them;
        None when one of them is not in this catalogue. The last :data:`UNION_CACHE` are kept, and
        callers only read them: checking and building one was ~1 µs of every filtered request
        (docs/serving.md, "Filtered feeds: shared feeds decoded once")."""
        key = tuple(categories)
        found = self.filters.get(key)
        if found is None:
            if not all(c in self.categories for c in key):
                return None
            found = {"allowed": self.members_of(key), "codes": self.codes_of(key), "catalogue": self.version}
            self.filters[key] = found
            if len(self.filters) > UNION_CACHE:
                self.filters.popitem(last=False)
        return found

    def search(self, text: str | None = None, *, categories: Iterable[str] = (), min_price: float | None = None,
               max_price: float | None = None, sort: str | None = None, limit: int = 20, offset: int = 0,
               facets: bool = False) -> Hits:
        """One page of hits; ``sort`` defaults to relevance with ``text``, else price."""
        sort = sort or ("relevance" if text else "price")
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}")
        categories = tuple(sorted({c.lower() for c in categories}))
        key = (text, categories, min_price, max_price, sort, limit, offset, facets)
        hits = self.cache.get(key)
        if hits is None:
            hits = self._search(text, categories, min_price, max_price, sort, limit, offset, facets)
            self.cache[key] = hits
            if len(self.cache) > CACHE_SIZE:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        return hits

    def _search(self, text: str | None, wanted: tuple[str, ...], min_price: float | None, max_price: float | None,
                sort: str, limit: int, offset: int, facets: bool) -> Hits:
        filters, args = [], []
        if min_price is not None:
            filters.append("i.price >= ?")
            args.append(min_price)
        if max_price is not None:
            filters.append("i.price <= ?")
            args.append(max_price)
        in_categories = f"i.category IN ({','.join('?' * len(wanted))})" if wanted else None
        if not text:
            return self._browse(filters + ([in_categories] if wanted else []), args + list(wanted), sort, limit, offset)
        expression = match_expression(text, self.vocabulary, self.terms)
        if expression is None:
            return Hits([], 0, {} if facets else None)
        if facets or filters or wanted:
            counts = self._facets(expression, min_price, max_price)
            total = sum(counts.get(c, 0) for c in wanted) if wanted else sum(counts.values())
        else:  # counted by the page query itself (one pass over the hits)
            counts, total = None, None
        if total == 0:
            return Hits([], 0, counts if facets else None)
        return self._page(expression, filters, args, in_categories, wanted, sort, limit, offset,
                          total, counts if facets else None)

    def _browse(self, filters: list[str], args: list, sort: str, limit: int, offset: int) -> Hits:
        where = f"WHERE {' AND '.join(filters)}" if filters else ""
        order = _ORDER["price" if sort == "relevance" else sort]
        (total,) = self.db.execute(f"SELECT count(*) FROM items i {where}", args).fetchone()
        docs = self.db.execute(f"SELECT i.doc FROM items i {where} ORDER BY {order} LIMIT ? OFFSET ?",
                               [*args, limit, offset]).fetchall()
        return Hits([orjson.loads(d) for (d,) in docs], total)

    def _facets(self, expression: str, min_price: float | None, max_price: float | None) -> dict[str, int]:
        counts: dict[str, int] = {}
        low = -math.inf if min_price is None else min_price
        high = math.inf if max_price is None else max_price
        bounded = min_price is not None or max_price is not None
        category, price = self.row_category, self.row_price
        for (row,) in self.db.execute("SELECT rowid FROM fts WHERE fts MATCH ?", (expression,)):
            if bounded and (price[row] is None or not low <= price[row] <= high):
                continue
            counts[category[row]] = counts.get(category[row], 0) + 1
        return counts

    def _page(self, expression: str, filters: list[str], args: list, in_categories: str | None,
              wanted: tuple[str, ...], sort: str, limit: int, offset: int, total: int | None,
              facets: dict[str, int] | None) -> Hits:
        """A page of hits; with ``total`` None, the hits are counted in the same pass (a window
        count), or by FTS5 when the page is past the end."""
        extra = "".join(f" AND {f}" for f in filters)
        if in_categories:
            extra += f" AND {in_categories}"
        rows = self.db.execute(
            f"SELECT i.doc, fts.rank AS score, count(*) OVER () FROM fts JOIN items i ON i.id = fts.rowid "
            f"WHERE fts MATCH ?{extra} ORDER BY {_ORDER[sort]} LIMIT ? OFFSET ?",
            [expression, *args, *wanted, limit, offset]).fetchall()
        if total is None:
            total = rows[0][2] if rows else self.db.execute("SELECT count(*) FROM fts WHERE fts MATCH ?",
                                                            (expression,)).fetchone()[0]
        return Hits([orjson.loads(d) for d, _, _ in rows], total, facets)
