"""Full-text search over titles and message text.

SQLite: the FTS5 table `messages_fts` (kept by triggers, see migration 0002; an answer has
its row once it ends: 0004, 0009). PostgreSQL: a GIN index on
`to_tsvector('ollama_web_search', left(content, 100000))` (migration 0005: text past a
message's first 100 000 characters is not searched there; migration 0008: the
configuration folds accents with `unaccent`, as FTS5 does, and an answer is indexed when it
ends, not at each checkpoint, as on SQLite since 0004). The user's text never reaches
the database as query syntax: it is cut into word tokens, and each token is bound as a
parameter — quoted as an FTS5 string on SQLite, passed to `plainto_tsquery` (which has no
syntax) on PostgreSQL. A word keeps its combining marks (Devanagari and Thai vowel signs,
Arabic and Hebrew vowel points, accents typed as separate characters): both databases'
tokenizers read such a word as one, so cut at its marks it matched nothing on PostgreSQL.
Every token must occur (AND). A word of a script written without spaces (Chinese, Japanese,
Thai...; and Korean, whose words carry their particles) and an emoji are found as substrings
of the message text instead (`terms`): the tokenizers index a run of such letters as one
word and drop emoji. No index serves that check: a search for a word in no message reads
all of the caller's messages (~80 ms for 200 000 on the benchmark's machine). Titles match
by substring, case and accents aside (each database folds both sides with its
`ollama_web_fold`), with LIKE wildcards escaped.

On SQLite the list walks the caller's conversations newest first (the list index) and stops
after a page, so the cost is in how each conversation is checked, and the best check depends
on how many messages match. One statement picks among three, from two cheap counts: the
matches, up to RARE_MATCHES (FTS5 rowids only), then, for a common word, the caller's among
the newest DENSE_SAMPLE messages (a few ms at most):

- rare (fewer than RARE_MATCHES matches): the set of matching conversation ids. Each match
  costs a row of the FTS content table (~1 µs); for a word in 170 000 messages, 200 ms.
- dense (at least DENSE_MATCHES of the newest DENSE_SAMPLE messages are the caller's and
  match): nearly every conversation matches in its first message or two, so each
  conversation's messages are looked up in the FTS index one rowid at a time (~100 µs a
  lookup, but few of them). The sample is the caller's own: a word dense in other users'
  messages says nothing of how soon the caller's conversations match, and this plan is slow
  when they don't.
- otherwise: the set of matching rowids (cheap: no content read), and each conversation's
  messages probed in it through `ix_messages_conversation_created_id` and
  `messages_fts_map`.

Which plan runs changes the cost only, never the result. The matching-rowids plan checks
every conversation of the caller that does not match before a page is full: when a common
word sits only in old conversations, that is ~0.7 µs a message of the caller's history.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from sqlalchemy import (
    Boolean,
    Select,
    and_,
    case,
    column,
    exists,
    func,
    literal_column,
    or_,
    select,
    table,
    type_coerce,
)

from ollama_web.core.db import fold_text
from ollama_web.db import Conversation, Message

MAX_QUERY_CHARS = 200
MAX_TOKENS = 16

# The text search configuration; the index expression and the query must use the same one.
TS_CONFIG = "ollama_web_search"  # migration 0008: `simple`, accents folded where possible
PG_INDEXED_CHARS = 100_000  # migration 0005's index: a tsvector holds at most 1 MiB
# PostgreSQL's index holds the messages that are not still being written (migration 0008): a
# partial index is used only for a query that states its condition, as constants (a bound
# parameter would not do in a generic plan).
_INDEXED = Message.status.not_in([literal_column("'pending'"), literal_column("'streaming'")])
_fts = table("messages_fts", column("rowid"), column("conversation_id"))
_fts_map = table("messages_fts_map", column("fts_rowid"), column("message_id"))
_owner = Conversation.__table__.alias("owner")

# SQLite plan thresholds (see the module docstring). Matches are counted over every user's
# messages: the FTS index is shared.
RARE_MATCHES = 10_000
DENSE_SAMPLE = 2_000
DENSE_MATCHES = 500


def _in_word(char: str) -> bool:
    """A word character (`\\w`: letter, digit, underscore) or a combining mark."""
    return char.isalnum() or char == "_" or unicodedata.category(char).startswith("M")


def tokens(query: str) -> list[str]:
    """The words of `query` (Unicode letters, digits, underscore, and the combining marks
    written with them), at most MAX_TOKENS."""
    return "".join(char if _in_word(char) else " " for char in query).split()[:MAX_TOKENS]


# Scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Khmer,
# Myanmar), and Korean, whose words carry their particles ("서울에서"): both databases'
# tokenizers index a whole run of such letters as one word, so a word inside it is found
# only as a substring.
_UNSPACED = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x2FDF),  # CJK radicals
    (0x3040, 0x31FF),  # Hiragana, Katakana, Bopomofo, Hangul compatibility Jamo
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
    (0x20000, 0x3FFFF),  # CJK extensions B and later
)
# Emoji and other symbols, with the joiners and modifiers written inside them: neither
# tokenizer indexes them at all.
_SYMBOL_CATEGORIES = frozenset({"So", "Sk"})
_SYMBOL_JOINERS = "\u200d\ufe0f"  # zero-width joiner, emoji presentation selector


def _unspaced(word: str) -> bool:
    return any(low <= ord(char) <= high for char in word for low, high in _UNSPACED)


def _symbol_runs(query: str) -> list[str]:
    runs = "".join(
        char if unicodedata.category(char) in _SYMBOL_CATEGORIES or char in _SYMBOL_JOINERS else " "
        for char in query
    )
    return [run for run in runs.split() if run.strip(_SYMBOL_JOINERS)]


def terms(query: str) -> tuple[list[str], list[str]]:
    """(words for the full-text index, text to find as substrings): a word of an unspaced
    script (see `_UNSPACED`) and each run of symbols (emoji) are substrings; at most
    MAX_TOKENS in all."""
    found = tokens(query)
    words = [word for word in found if not _unspaced(word)]
    fragments = [word for word in found if _unspaced(word)] + _symbol_runs(query)
    return words, fragments[: MAX_TOKENS - len(words)]


def fts5_query(words: list[str]) -> str:
    """An FTS5 MATCH string: every word as a quoted string (words hold no quotes)."""
    return " ".join(f'"{word}"' for word in words)


def content_tsvector() -> Any:
    """`to_tsvector('ollama_web_search', left(content, 100000))`, spelled exactly as in the
    GIN index (migrations 0005 and 0008: a tsvector holds at most 1 MiB), the length a
    literal so that the planner matches the index's expression."""
    indexed = func.left(Message.content, literal_column(str(PG_INDEXED_CHARS)))
    return func.to_tsvector(literal_column(f"'{TS_CONFIG}'"), indexed)


def _sqlite_message_match(user_id: str, words: list[str]) -> Any:
    """Some message of the conversation has every word (FTS5), by the plan that suits it."""
    query = fts5_query(words)

    def match() -> Any:
        return literal_column("messages_fts").op("MATCH")(query)

    capped: Select[Any] = select(literal_column("1")).select_from(_fts).where(match())
    match_count = (
        select(func.count()).select_from(capped.limit(RARE_MATCHES).subquery()).scalar_subquery()
    )
    newest_rowid = select(func.max(_fts_map.c.fts_rowid)).scalar_subquery()
    recent_matches = (
        select(func.count())
        .select_from(_fts)
        .where(
            match(),
            _fts.c.rowid > newest_rowid - DENSE_SAMPLE,
            exists().where(_owner.c.id == _fts.c.conversation_id, _owner.c.user_id == user_id),
        )
        .scalar_subquery()
    )
    rare = Conversation.id.in_(select(_fts.c.conversation_id).where(match()))
    dense = _some_message(exists().where(match(), _fts.c.rowid == _fts_map.c.fts_rowid))
    # `+ 0`: a membership test for each of the conversation's messages; on the bare column
    # SQLite would probe the map's index with every matching rowid, for each conversation.
    rowids = select(_fts.c.rowid).where(match())
    by_rowids = _some_message((_fts_map.c.fts_rowid + literal_column("0")).in_(rowids))
    plan = case(
        (match_count < RARE_MATCHES, rare),
        (recent_matches >= DENSE_MATCHES, dense),
        else_=by_rowids,
    )
    return type_coerce(plan, Boolean)


def _some_message(condition: Any) -> Any:
    """EXISTS a message of the conversation whose FTS row (`messages_fts_map`) meets it."""
    return (
        exists()
        .where(
            Message.conversation_id == Conversation.id,
            _fts_map.c.message_id == Message.id,
            condition,
        )
        .correlate(Conversation)
    )


def _escape_like(text: Any) -> Any:
    """The SQL expression `text` with LIKE's wildcards escaped by `/` (what `autoescape`
    does for a literal value, which a value folded by the database is not)."""
    return func.replace(func.replace(func.replace(text, "/", "//"), "%", "/%"), "_", "/_")


def _title_contains(dialect: str, query: str) -> Any:
    """The title holds `query`, case and accents aside ("ecole" finds "École"). Each
    database folds both sides with its own `ollama_web_fold`: on PostgreSQL `unaccent`
    (migration 0008), on SQLite Python's (`core.db.fold_text`: a plain ASCII title costs
    about what `lower()` did; measured on 10 000 titles, 2.97 ms against 2.63)."""
    if dialect == "sqlite":
        return func.ollama_web_fold(Conversation.title).contains(fold_text(query), autoescape=True)
    pattern = func.concat("%", _escape_like(func.ollama_web_fold(query)), "%")
    return func.ollama_web_fold(Conversation.title).like(pattern, escape="/")


def _message_match(dialect: str, user_id: str, words: list[str]) -> Any:
    if dialect == "sqlite":
        return _sqlite_message_match(user_id, words)
    tsquery = func.plainto_tsquery(literal_column(f"'{TS_CONFIG}'"), " ".join(words))
    matching = select(Message.conversation_id).where(
        _INDEXED,
        content_tsvector().op("@@")(tsquery),
    )
    return Conversation.id.in_(matching)


def _contains_fragments(dialect: str, fragments: list[str]) -> Any:
    """Some message of the conversation contains every fragment, as written (these scripts
    and symbols have no case). No index serves this: each of the caller's conversations is
    read until a page is full."""
    find = func.instr if dialect == "sqlite" else func.strpos
    return (
        exists()
        .where(
            Message.conversation_id == Conversation.id,
            *(find(Message.content, fragment) > 0 for fragment in fragments),
        )
        .correlate(Conversation)
    )


def matches(dialect: str, user_id: str, query: str) -> Any:
    """A condition on `user_id`'s conversations: the title contains `query`, or its messages
    have the query's words (one message all the indexed words, one all the substrings; see
    `terms`). `user_id` only steers the SQLite plan; the caller scopes the statement."""
    query = query[:MAX_QUERY_CHARS]
    title = _title_contains(dialect, query)
    words, fragments = terms(query)
    found = [_message_match(dialect, user_id, words)] if words else []
    if fragments:
        found.append(_contains_fragments(dialect, fragments))
    if not found:
        return title
    return or_(title, and_(*found))
