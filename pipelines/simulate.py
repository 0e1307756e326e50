"""A seeded simulation of the INBO app: the demo world every pipeline runs on.

`simulate` replaces the app database with publishers and their newsletter issues, users with
latent tastes and their subscriptions, then plays the app one day at a time: sessions on the
feed, email and search surfaces with impressions, email opens, clicks, reads (kept in
`reading_progress`), bookmarks, shares and hides. The latent truth (tastes, item quality, churn)
goes to Parquet so tests can check that the models find it.

Each day is generated with numpy and inserted in bulk, so memory is bounded by one day of events.
Interactions reach the database in `recorded_at` order, as the app's own writes would, and
nothing recorded at or after `end` exists yet.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Integer, Table
from sqlalchemy.types import TypeEngine

from inbo.lake import batch_key
from pipelines import app_counters, appdb

log = logging.getLogger(__name__)

Columns = dict[str, np.ndarray]

VOCABULARY: dict[str, tuple[str, ...]] = {
    "technology": (
        "software", "startup", "cloud", "chip", "semiconductor", "developer", "algorithm",
        "smartphone", "silicon", "robotics", "cybersecurity", "encryption", "database",
        "browser", "opensource", "kernel", "compiler", "gadget", "processor", "broadband",
        "app", "platform", "api", "automation", "ai", "datacenter", "quantum", "hardware",
        "firmware", "wearable", "server", "code", "privacy", "laptop", "network",
    ),
    "politics": (
        "election", "parliament", "senate", "congress", "minister", "campaign", "ballot",
        "vote", "policy", "legislation", "coalition", "opposition", "referendum", "diplomacy",
        "treaty", "sanctions", "governor", "president", "mayor", "lobbying", "polls", "debate",
        "constitution", "court", "reform", "democracy", "candidate", "party", "cabinet", "bill",
        "veto", "embassy", "summit", "populism", "electorate",
    ),
    "finance": (
        "market", "stocks", "bonds", "inflation", "interest", "rates", "bank", "investor",
        "portfolio", "dividend", "earnings", "equity", "hedge", "fund", "crypto", "bitcoin",
        "mortgage", "credit", "debt", "recession", "fed", "yield", "valuation", "ipo", "merger",
        "acquisition", "trading", "currency", "forex", "savings", "pension", "tax", "budget",
        "revenue", "profit",
    ),
    "sport": (
        "football", "soccer", "basketball", "tennis", "cricket", "rugby", "olympics",
        "championship", "league", "season", "coach", "transfer", "goal", "match", "tournament",
        "stadium", "athlete", "marathon", "cycling", "formula", "racing", "golf", "boxing",
        "playoff", "striker", "keeper", "referee", "medal", "sprint", "derby", "fixture", "squad",
        "injury", "captain",
    ),
    "science": (
        "physics", "biology", "chemistry", "genome", "telescope", "galaxy", "particle",
        "experiment", "laboratory", "researcher", "hypothesis", "molecule", "neuron",
        "evolution", "fossil", "asteroid", "planet", "nasa", "rocket", "orbit", "satellite",
        "microscope", "protein", "cell", "dna", "species", "astronomy", "theory", "geology",
        "volcano", "dinosaur", "entropy", "discovery",
    ),
    "culture": (
        "film", "cinema", "novel", "author", "museum", "exhibition", "theatre", "music", "album",
        "concert", "festival", "artist", "painting", "gallery", "poetry", "opera", "ballet",
        "director", "actor", "series", "television", "podcast", "book", "literature", "premiere",
        "orchestra", "sculpture", "heritage", "comedy", "documentary", "award", "oscar", "band",
    ),
    "food": (
        "recipe", "restaurant", "chef", "kitchen", "baking", "bread", "pasta", "cheese", "wine",
        "coffee", "vegan", "vegetarian", "dessert", "chocolate", "spice", "ramen", "sushi",
        "pizza", "grill", "barbecue", "menu", "flavour", "dinner", "breakfast", "brunch",
        "fermentation", "sourdough", "cocktail", "bakery", "ingredients", "tasting", "cuisine",
        "noodles", "salad",
    ),
    "travel": (
        "flight", "airline", "airport", "hotel", "hostel", "passport", "visa", "destination",
        "itinerary", "beach", "island", "mountain", "hiking", "backpacking", "cruise", "train",
        "railway", "roadtrip", "luggage", "tourism", "resort", "guidebook", "adventure",
        "vacation", "holiday", "abroad", "booking", "journey", "camping", "trek", "ferry",
        "landmark", "sightseeing",
    ),
    "health": (
        "fitness", "nutrition", "diet", "sleep", "wellness", "therapy", "mental", "anxiety",
        "vaccine", "hospital", "doctor", "nurse", "patient", "disease", "cancer", "diabetes",
        "heart", "exercise", "yoga", "meditation", "clinic", "medicine", "symptoms", "immune",
        "virus", "pandemic", "treatment", "vitamin", "stress", "longevity", "workout",
        "calories", "pharmacy",
    ),
    "gaming": (
        "console", "playstation", "xbox", "nintendo", "esports", "gamer", "multiplayer", "rpg",
        "shooter", "indie", "studio", "steam", "controller", "quest", "level", "boss",
        "speedrun", "twitch", "streamer", "patch", "expansion", "dlc", "arcade", "pixel",
        "sandbox", "roguelike", "mmo", "leaderboard", "cosplay", "gameplay", "trailer",
        "remaster", "lore",
    ),
    "climate": (
        "emissions", "carbon", "warming", "renewable", "solar", "wind", "battery", "electric",
        "heatwave", "drought", "flood", "wildfire", "glacier", "ocean", "biodiversity",
        "deforestation", "recycling", "sustainability", "methane", "netzero", "pollution",
        "ecosystem", "conservation", "hydrogen", "grid", "adaptation", "weather", "sealevel",
        "permafrost", "coral", "offsets", "greenhouse", "forest",
    ),
    "design": (
        "typography", "font", "layout", "logo", "branding", "interface", "ux", "ui", "prototype",
        "figma", "illustration", "palette", "colour", "composition", "poster", "architecture",
        "interior", "furniture", "minimalism", "sketch", "moodboard", "wireframe", "icon",
        "graphic", "whitespace", "kerning", "bauhaus", "accessibility", "aesthetic", "craft",
        "pattern", "texture", "atelier", "ceramics", "lighting",
    ),
}  # fmt: skip
"""Topic words per category; disjoint, so a text's words say which category it is about."""

CATEGORIES: tuple[str, ...] = tuple(VOCABULARY)

FILLER: dict[str, tuple[str, ...]] = {
    "en": (
        "the", "a", "of", "and", "to", "in", "for", "on", "with", "new", "how", "why", "what",
        "this", "week", "your", "weekly", "inside", "guide", "notes", "today", "more", "best",
        "latest", "big", "story", "read", "edition", "update", "look", "things", "about", "from",
        "our", "after", "still", "next", "people", "time", "really",
    ),
    "de": (
        "der", "die", "das", "und", "mit", "für", "neue", "woche", "heute", "warum", "wie",
        "über", "ein", "eine", "im", "vom", "ausgabe", "mehr", "zum", "nach",
    ),
    "fr": (
        "le", "la", "les", "et", "avec", "pour", "nouveau", "semaine", "aujourd'hui", "pourquoi",
        "comment", "dans", "une", "des", "sur", "plus", "édition", "du", "après", "notre",
    ),
    "es": (
        "el", "la", "los", "las", "y", "con", "para", "nuevo", "semana", "hoy", "por", "qué",
        "cómo", "en", "una", "del", "más", "edición", "sobre", "nuestra",
    ),
}  # fmt: skip
"""Words shared by every category, in the issue's language."""

LANGUAGES: tuple[str, ...] = tuple(FILLER)
PUBLISHER_LANGUAGE_SHARE = (0.82, 0.08, 0.06, 0.04)

PUBLISHER_STEMS: dict[str, tuple[str, ...]] = {
    "technology": ("Silicon", "Byte", "Circuit", "Stack", "Kernel", "Signal", "Pixel Pushers"),
    "politics": ("Ballot", "Capitol", "Agora", "Lobby", "Polling Station", "Senate Floor"),
    "finance": ("Ledger", "Bull & Bear", "Compound", "Yield", "Balance Sheet", "Ticker"),
    "sport": ("Touchline", "Final Whistle", "Podium", "Dugout", "Extra Time", "Photo Finish"),
    "science": ("Lab Notes", "Half-Life", "Orbit", "Petri", "Field Notes", "Eureka"),
    "culture": ("Curtain Call", "Marginalia", "Side B", "Gallery", "Reel", "Encore"),
    "food": ("Mise en Place", "Sourdough", "Pantry", "Second Helping", "Salt & Fat", "Larder"),
    "travel": ("Carry-On", "Far Afield", "Layover", "Wayfarer", "Window Seat", "Compass"),
    "health": ("Pulse", "Vital Signs", "Resting Rate", "Well", "Checkup", "Long Run"),
    "gaming": ("Respawn", "Save Point", "Loot Drop", "Player Two", "Boss Fight", "Side Quest"),
    "climate": ("Carbon Copy", "Tipping Point", "Heat Map", "Green Ledger", "Thaw", "Canopy"),
    "design": ("Kerning", "Grid Systems", "Whitespace", "Swatch", "Form & Function", "Serif"),
}
PUBLISHER_SUFFIXES: tuple[str, ...] = (
    "Weekly", "Dispatch", "Digest", "Brief", "Letter", "Report", "Insider", "Daily", "Notes",
)  # fmt: skip

COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "ES", "IN", "CA", "AU", "NL", "IE")
COUNTRY_SHARE = (0.28, 0.14, 0.14, 0.10, 0.08, 0.08, 0.07, 0.05, 0.04, 0.02)
NATIVE_LANGUAGE = {"DE": "de", "FR": "fr", "ES": "es"}
NATIVE_SHARE = 0.7  # of users in those countries who read in their own language, not English

DEVICES: tuple[str, ...] = ("ios", "android", "web")
DEVICE_SHARE = (0.42, 0.33, 0.25)
MOBILE = np.array([True, True, False])
PRIMARY_DEVICE_SHARE = 0.85

SURFACES: tuple[str, ...] = ("feed", "email", "search")
FEED, EMAIL, SEARCH = range(3)
SOURCES: tuple[str, ...] = ("recent", "popularity", "subscriptions", "explore", "search")
RECENT, POPULAR, SUBSCRIBED, EXPLORE, SEARCHED = range(5)
FEED_SOURCE_MIX = (0.35, 0.25, 0.25, 0.15, 0.0)
VARIANTS: tuple[str, ...] = ("control", "treatment")

HOURLY = np.array(
    [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1.5, 3, 3.5, 2.5, 2, 2, 2.5, 2, 1.8, 1.8, 2, 2.5, 3, 3.5, 3.5, 3,
     2.2, 1.5]
)  # fmt: skip
HOURLY = HOURLY / HOURLY.sum()
"""When in the day sessions start: a morning and an evening peak."""

TOPIC_SHARE = 0.7  # of an issue's words drawn from its category's vocabulary
TASTE_CONCENTRATION = 0.12  # Dirichlet alpha: most users love one to three categories
CHURN_SHARE = 0.15
NEW_USER_SHARE = 0.2  # of users who sign up inside the window
SESSIONS_MEDIAN, SESSIONS_SIGMA = 0.5, 0.9  # lognormal sessions per active day
SUBSCRIPTIONS_MEAN = 2.0
SUBSCRIBED_IN_WINDOW = 0.25  # of subscriptions made inside the window, so emitted as events
EMAIL_SHARE, SEARCH_SHARE = 0.25, 0.1  # of sessions (email only for users who subscribe)
RECENT_WINDOW = np.timedelta64(3, "D")
SUBSCRIPTION_WINDOW = np.timedelta64(7, "D")
POPULARITY_HALF_LIFE_DAYS = 3.0
CLICK_MEMORY = 0.6  # share of yesterday's click counts that still drives today's popularity
PUBLISH_HOUR = np.timedelta64(2, "h")  # the nightly table version goes live at 02:00 UTC
CLICK_BASE = np.array([0.30, 0.45, 0.50])  # by surface; on email, given the email was opened
POSITION_DECAY = 0.8
LATE_SESSION_SHARE = 0.016  # of mobile sessions uploaded 1-30 h late: about 1% of rows
CHUNK_ROWS = 50_000
HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
DAY = np.timedelta64(1, "D")


@dataclass(frozen=True)
class SimulationSummary:
    """Rows written per table and the simulated window [start, end), naive UTC."""

    start: datetime
    end: datetime
    users: int
    publishers: int
    newsletter_issues: int
    subscriptions: int
    experience_interactions: int
    reading_progress: int


def simulate(
    db_url: str,
    *,
    users: int,
    items: int,
    days: int,
    seed: int,
    end: datetime,
    truth_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    dirty_share: float = 0.0,
    counters: app_counters.CounterStore | None = None,
    counter_drift: float = 0.0,
    activity: float = 1.0,
) -> SimulationSummary:
    """Replace the app database at `db_url` with a simulated world of `days` days up to `end`.

    `dirty_share` of the interactions are broken the ways real app data breaks (an unknown kind, a
    negative dwell, an issue that does not exist, a clock in the future), from a random stream of
    their own, so the same seed gives the same clean rows whatever the share.

    With `counters`, the app's per-item counters are rebuilt in Redis as the rows are written, a
    `counter_drift` share of the increments lost or doubled (again from a stream of their own);
    the drift is recorded in `truth_dir/item_counter_drift.parquet`.

    `activity` scales every user's sessions per day: 1.0 is the demo's engaged audience (about 7
    interactions per user and day); a large audience that opens the app only now and then is
    nearer 0.085 (about 18M interactions for 1M users over 30 days).
    """
    if min(users, items, days) < 1:
        raise ValueError("users, items and days must all be at least 1")
    if not 0.0 <= dirty_share < 1.0:
        raise ValueError("dirty_share must be in [0, 1)")
    if not 0.0 <= counter_drift < 1.0:
        raise ValueError("counter_drift must be in [0, 1)")
    if activity <= 0:
        raise ValueError("activity must be positive")
    end = _naive_utc(end)
    start = end - timedelta(days=days)
    rng = np.random.default_rng(seed)
    pubs = _publishers(rng, min(items, max(5, round(items / 15))), start)
    issues = _issues(rng, items, pubs, start, end)
    people, tastes = _users(rng, users, start, end)
    people["sessions_per_day"] *= activity
    subs = _subscriptions(rng, people, tastes, pubs, start, end)
    _write_truth(truth_dir, people, tastes, issues)

    engine = appdb.app_engine(db_url)
    try:
        appdb.metadata.drop_all(engine)
        appdb.create_app_schema(engine)
        with engine.connect() as conn:
            _tune_for_bulk_load(conn)
            _insert(conn, appdb.users, people)
            _insert(conn, appdb.publishers, pubs)
            _insert(conn, appdb.newsletter_issues, issues)
            _insert(conn, appdb.subscriptions, subs)
            conn.commit()
            world = _World.build(people, tastes, issues, subs, len(pubs), end)
            flaws = _Flaws(np.random.default_rng([seed, 1]), dirty_share)
            app = (
                app_counters.SimulatedApp.replacing(
                    counters, np.random.default_rng([seed, 2]), counter_drift
                )
                if counters is not None
                else None
            )
            events, reads = _play(conn, rng, world, start, days, progress, flaws, app)
    finally:
        engine.dispose()
    if app is not None:
        app.write_truth(truth_dir)
    summary = SimulationSummary(
        start, end, len(people), len(pubs), len(issues), len(subs), events, reads
    )
    log.debug("simulated %s", summary)
    return summary


# -- the catalogue -----------------------------------------------------------------------------


def _publishers(rng: np.random.Generator, count: int, start: datetime) -> pd.DataFrame:
    """Publishers with a main category (round robin, so every category gets its share)."""
    category = np.resize(rng.permutation(len(CATEGORIES)), count)
    created = np.datetime64(start, "us") - _seconds(rng.uniform(60, 900, count) * 86_400)
    frame = pd.DataFrame(
        {
            "name": _publisher_names(rng, category),
            "category": np.array(CATEGORIES, dtype=object)[category],
            "category_code": category,
            "created_at": created,
            "language": rng.choice(len(LANGUAGES), count, p=PUBLISHER_LANGUAGE_SHARE),
            "quality": rng.normal(0.0, 0.6, count),
            "output": rng.lognormal(0.0, 0.7, count),
        }
    )
    frame = frame.sort_values("created_at", kind="stable", ignore_index=True)
    frame.insert(0, "id", np.arange(1, count + 1))
    return frame


def _publisher_names(rng: np.random.Generator, category: np.ndarray) -> np.ndarray:
    names = np.empty(len(category), dtype=object)
    for code, name in enumerate(CATEGORIES):
        rows = np.flatnonzero(category == code)
        pool = [
            f"{stem} {suffix}" for stem in PUBLISHER_STEMS[name] for suffix in PUBLISHER_SUFFIXES
        ]
        picks = rng.permutation(len(pool))
        names[rows] = [
            pool[picks[i % len(pool)]] + (f" {i // len(pool) + 1}" if i >= len(pool) else "")
            for i in range(len(rows))
        ]
    return names


def _issues(
    rng: np.random.Generator, count: int, pubs: pd.DataFrame, start: datetime, end: datetime
) -> pd.DataFrame:
    """Issues with ids in publishing order; ~30% are a backlog from the 30 days before `start`.

    Every publisher has a backlog issue, so a subscription made in the window always has an
    issue to be recorded on; every day of the window gets new issues.
    """
    n_pub, days = len(pubs), (end - start).days
    backlog = max(n_pub, round(0.3 * count))
    weights = pubs["output"].to_numpy() / pubs["output"].sum()
    publisher = np.concatenate(
        [rng.permutation(n_pub), rng.choice(n_pub, count - n_pub, p=weights)]
    )
    offsets = np.concatenate(
        [
            -rng.uniform(0, 30 * 86_400, backlog),
            rng.permutation(np.resize(np.arange(days), count - backlog)) * 86_400.0
            + rng.uniform(5 * 3600, 20 * 3600, count - backlog),
        ]
    )
    published = np.datetime64(start, "us") + _seconds(offsets)
    own = pubs["category_code"].to_numpy()[publisher]
    category = np.where(rng.random(count) < 0.85, own, rng.integers(0, len(CATEGORIES), count))
    language = pubs["language"].to_numpy()[publisher]
    quality = 1 / (1 + np.exp(-(pubs["quality"].to_numpy()[publisher] + rng.normal(0, 0.6, count))))
    frame = pd.DataFrame(
        {
            "publisher_id": pubs["id"].to_numpy()[publisher],
            "title": [t[:1].upper() + t[1:] for t in _texts(rng, category, language, 5, 10)],
            "body_preview": _texts(rng, category, language, 30, 80),
            "category": np.array(CATEGORIES, dtype=object)[category],
            "tags": _tags(rng, category),
            "language": np.array(LANGUAGES, dtype=object)[language],
            "published_at": published,
            "created_at": published - _seconds(rng.uniform(600, 2 * 86_400, count)),
            "publisher": publisher,
            "category_code": category,
            "language_code": language,
            "quality": quality,
            "read_seconds": rng.lognormal(np.log(300), 0.5, count),
        }
    )
    frame = frame.sort_values("published_at", kind="stable", ignore_index=True)
    frame.insert(0, "id", np.arange(1, count + 1))
    return frame


def _texts(
    rng: np.random.Generator, category: np.ndarray, language: np.ndarray, low: int, high: int
) -> list[str]:
    """One text per issue of `low`..`high` words, ~70% from its category's vocabulary."""
    lengths = rng.integers(low, high + 1, len(category))
    owner = np.repeat(np.arange(len(category)), lengths)
    topical = rng.random(len(owner)) < TOPIC_SHARE
    words = np.empty(len(owner), dtype=object)
    for code, name in enumerate(CATEGORIES):
        rows = topical & (category[owner] == code)
        words[rows] = _zipf_words(rng, VOCABULARY[name], int(rows.sum()))
    for code, name in enumerate(LANGUAGES):
        rows = ~topical & (language[owner] == code)
        words[rows] = _zipf_words(rng, FILLER[name], int(rows.sum()))
    ends = np.cumsum(lengths)
    return [" ".join(words[a:b]) for a, b in zip(ends - lengths, ends, strict=True)]


def _zipf_words(rng: np.random.Generator, vocabulary: tuple[str, ...], count: int) -> np.ndarray:
    # Some topics are hotter than others, as in real newsletters.
    weights = 1 / np.arange(1, len(vocabulary) + 1) ** 0.8
    picks = rng.choice(len(vocabulary), count, p=weights / weights.sum())
    return np.array(vocabulary, dtype=object)[picks]


def _tags(rng: np.random.Generator, category: np.ndarray) -> list[str]:
    sizes = rng.integers(2, 5, len(category))
    return [
        ",".join(rng.choice(VOCABULARY[CATEGORIES[code]], size, replace=False))
        for code, size in zip(category, sizes, strict=True)
    ]


# -- the audience ------------------------------------------------------------------------------


def _users(
    rng: np.random.Generator, count: int, start: datetime, end: datetime
) -> tuple[pd.DataFrame, np.ndarray]:
    """Users in signup order with their behaviour, and their (count x category) taste matrix."""
    start64, end64 = np.datetime64(start, "us"), np.datetime64(end, "us")
    window = (end - start).total_seconds()
    signup = np.where(
        rng.random(count) < NEW_USER_SHARE,
        start64 + _seconds(rng.uniform(0, window, count)),
        start64 - _seconds(rng.uniform(86_400, 365 * 86_400, count)),
    )
    order = np.argsort(signup, kind="stable")
    signup = signup[order]
    first_active = np.maximum(signup, start64)
    churns = rng.random(count) < CHURN_SHARE
    churn = np.where(churns, _between(first_active, end64, rng.random(count)), end64)
    updated = _between(signup, end64, np.where(rng.random(count) < 0.3, rng.random(count), 0))
    country = rng.choice(len(COUNTRIES), count, p=COUNTRY_SHARE)
    countries = np.array(COUNTRIES, dtype=object)[country]
    native = np.array([LANGUAGES.index(NATIVE_LANGUAGE.get(c, "en")) for c in COUNTRIES])
    language = np.where(rng.random(count) < NATIVE_SHARE, native[country], 0)
    frame = pd.DataFrame(
        {
            "id": np.arange(1, count + 1),
            "created_at": signup,
            "updated_at": updated.astype("datetime64[us]"),
            "country": countries,
            "language": np.array(LANGUAGES, dtype=object)[language],
            "language_code": language,
            "device": rng.choice(len(DEVICES), count, p=DEVICE_SHARE),
            "sessions_per_day": np.minimum(
                rng.lognormal(np.log(SESSIONS_MEDIAN), SESSIONS_SIGMA, count), 10.0
            ),
            "churn": churn.astype("datetime64[us]"),
            "churned": churns,
            "variant": rng.integers(0, len(VARIANTS), count),
        }
    )
    tastes = rng.dirichlet(np.full(len(CATEGORIES), TASTE_CONCENTRATION), count)
    return frame, tastes


def _subscriptions(
    rng: np.random.Generator,
    people: pd.DataFrame,
    tastes: np.ndarray,
    pubs: pd.DataFrame,
    start: datetime,
    end: datetime,
) -> pd.DataFrame:
    """Subscriptions to publishers of the categories a user likes; some end before `end`."""
    counts = rng.poisson(SUBSCRIPTIONS_MEAN, len(people))
    user = np.repeat(np.arange(len(people)), counts)
    category = _sample_categories(rng, tastes, user, pubs["category_code"].to_numpy())
    publisher = _sample_publishers(rng, pubs, category)
    user, publisher = _unique_pairs(user, publisher, len(pubs))
    start64, end64 = np.datetime64(start, "us"), np.datetime64(end, "us")
    signup = people["created_at"].to_numpy()[user]
    last = people["churn"].to_numpy()[user]
    first = np.maximum(signup, start64)
    in_window = (signup >= start64) | (rng.random(len(user)) < SUBSCRIBED_IN_WINDOW)
    subscribed = np.where(
        in_window,
        _between(first, last, rng.random(len(user))),
        _between(signup, start64, rng.random(len(user))),
    ).astype("datetime64[us]")
    ended = rng.random(len(user)) < 0.12
    unsubscribed = _between(subscribed, np.minimum(last, end64), rng.uniform(0.05, 1, len(user)))
    frame = pd.DataFrame(
        {
            "user_id": user + 1,
            "publisher_id": pubs["id"].to_numpy()[publisher],
            "subscribed_at": subscribed,
            "unsubscribed_at": np.where(ended, unsubscribed, np.datetime64("NaT")).astype(
                "datetime64[us]"
            ),
            "publisher": publisher,
        }
    )
    frame = frame.sort_values("subscribed_at", kind="stable", ignore_index=True)
    frame.insert(0, "id", np.arange(1, len(frame) + 1))
    return frame


def _sample_categories(
    rng: np.random.Generator, tastes: np.ndarray, user: np.ndarray, offered: np.ndarray
) -> np.ndarray:
    """One category per row from the user's taste, among categories that have publishers."""
    weights = tastes * np.isin(np.arange(len(CATEGORIES)), offered)
    return _sample_rows(rng, np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)[user])


def _sample_rows(rng: np.random.Generator, cumulative: np.ndarray) -> np.ndarray:
    """Column index drawn per row of a row-wise cumulative distribution."""
    draws = rng.random(len(cumulative))[:, None]
    return np.minimum((cumulative < draws).sum(axis=1), cumulative.shape[1] - 1)


def _sample_publishers(
    rng: np.random.Generator, pubs: pd.DataFrame, category: np.ndarray
) -> np.ndarray:
    """A publisher of each row's category, the more prolific ones more often."""
    code = pubs["category_code"].to_numpy()
    order = np.argsort(code, kind="stable")
    cumulative = np.cumsum(pubs["output"].to_numpy()[order])
    first = np.searchsorted(code[order], category)
    last = np.searchsorted(code[order], category, side="right") - 1
    below = np.where(first > 0, cumulative[np.maximum(first - 1, 0)], 0.0)
    draws = below + rng.random(len(category)) * (cumulative[last] - below)
    return order[np.minimum(np.searchsorted(cumulative, draws, side="right"), last)]


def _unique_pairs(
    user: np.ndarray, publisher: np.ndarray, n_publishers: int
) -> tuple[np.ndarray, np.ndarray]:
    keys = np.unique(user * n_publishers + publisher)
    return keys // n_publishers, keys % n_publishers


def _write_truth(
    truth_dir: Path, people: pd.DataFrame, tastes: np.ndarray, issues: pd.DataFrame
) -> None:
    """The latent world as Parquet: what a good recommender should rediscover."""
    truth_dir.mkdir(parents=True, exist_ok=True)
    n_users, n_categories = tastes.shape
    pd.DataFrame(
        {
            "user_id": np.repeat(people["id"].to_numpy(), n_categories),
            "category": np.tile(np.array(CATEGORIES, dtype=object), n_users),
            "weight": tastes.ravel(),
        }
    ).to_parquet(truth_dir / "user_tastes.parquet", index=False)
    issues[["id", "category", "quality"]].rename(columns={"id": "item_id"}).to_parquet(
        truth_dir / "items.parquet", index=False
    )
    pd.DataFrame(
        {
            "user_id": people["id"],
            "sessions_per_day": people["sessions_per_day"],
            "churned_at": people["churn"].where(people["churned"]),
            "variant": np.array(VARIANTS, dtype=object)[people["variant"]],
        }
    ).to_parquet(truth_dir / "users.parquet", index=False)


# -- one day in the app ------------------------------------------------------------------------


@dataclass(frozen=True)
class _World:
    """The static world as arrays: issues in published order, users in id order (index = id-1)."""

    published: np.ndarray
    publisher: np.ndarray
    category: np.ndarray
    language: np.ndarray
    quality: np.ndarray
    read_seconds: np.ndarray
    signup: np.ndarray
    churn: np.ndarray
    sessions_per_day: np.ndarray
    relative_taste: np.ndarray  # taste / the user's top taste, so 1.0 = favourite category
    cumulative_taste: np.ndarray
    device: np.ndarray
    country: np.ndarray
    user_language: np.ndarray
    variant: np.ndarray
    subscribed: np.ndarray
    unsubscribed: np.ndarray
    follower: np.ndarray
    followed: np.ndarray
    n_publishers: int
    origin: np.datetime64  # time keys below are seconds since the first issue
    span: int  # seconds per publisher or category block of those keys
    by_publisher: tuple[np.ndarray, np.ndarray]
    by_category: tuple[np.ndarray, np.ndarray]

    @classmethod
    def build(
        cls,
        people: pd.DataFrame,
        tastes: np.ndarray,
        issues: pd.DataFrame,
        subs: pd.DataFrame,
        n_publishers: int,
        end: datetime,
    ) -> _World:
        published = issues["published_at"].to_numpy()
        origin = published.min()
        span = int((np.datetime64(end, "us") - origin) // np.timedelta64(1, "s")) + 86_400
        seconds = _seconds_since(origin, published)
        return cls(
            published=published,
            publisher=issues["publisher"].to_numpy(),
            category=issues["category_code"].to_numpy(),
            language=issues["language_code"].to_numpy(),
            quality=issues["quality"].to_numpy(),
            read_seconds=issues["read_seconds"].to_numpy(),
            signup=people["created_at"].to_numpy(),
            churn=people["churn"].to_numpy(),
            sessions_per_day=people["sessions_per_day"].to_numpy(),
            relative_taste=tastes / tastes.max(axis=1, keepdims=True),
            cumulative_taste=np.cumsum(tastes, axis=1),
            device=people["device"].to_numpy(),
            country=people["country"].to_numpy(dtype=object),
            user_language=people["language_code"].to_numpy(),
            variant=people["variant"].to_numpy(),
            subscribed=subs["subscribed_at"].to_numpy(),
            unsubscribed=subs["unsubscribed_at"].to_numpy(),
            follower=subs["user_id"].to_numpy() - 1,
            followed=subs["publisher"].to_numpy(),
            n_publishers=n_publishers,
            origin=origin,
            span=span,
            by_publisher=_sorted_keys(issues["publisher"].to_numpy() * span + seconds),
            by_category=_sorted_keys(issues["category_code"].to_numpy() * span + seconds),
        )

    def pick_any(self, rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
        """A uniformly random issue published by each time; -1 where there is none."""
        hi = np.searchsorted(self.published, times, side="right")
        return _uniform_in(rng, np.zeros_like(hi), hi)

    def pick_recent(self, rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
        lo = np.searchsorted(self.published, times - RECENT_WINDOW)
        hi = np.searchsorted(self.published, times, side="right")
        return _uniform_in(rng, lo, hi)

    def pick_popular(
        self, rng: np.random.Generator, times: np.ndarray, weights: np.ndarray
    ) -> np.ndarray:
        """An issue published by each time, drawn in proportion to `weights`."""
        cumulative = np.cumsum(weights)
        hi = np.searchsorted(self.published, times, side="right")
        total = np.where(hi > 0, cumulative[np.maximum(hi - 1, 0)], 0.0)
        drawn = np.searchsorted(cumulative, rng.random(len(times)) * total, side="right")
        return np.where(hi > 0, np.minimum(drawn, hi - 1), -1)

    def pick_from_publishers(
        self, rng: np.random.Generator, publisher: np.ndarray, times: np.ndarray
    ) -> np.ndarray:
        """A recent issue of each publisher, else its latest one; -1 if it has none yet."""
        keys, order = self.by_publisher
        base = publisher * self.span
        lo = np.searchsorted(keys, base + _seconds_since(self.origin, times - SUBSCRIPTION_WINDOW))
        hi = np.searchsorted(keys, base + _seconds_since(self.origin, times), side="right")
        latest = np.where(
            (hi > 0) & (keys[np.maximum(hi - 1, 0)] // self.span == publisher), hi - 1, -1
        )
        at = _uniform_in(rng, lo, hi)
        at = np.where(at >= 0, at, latest)
        return np.where(at >= 0, order[at], -1)

    def pick_in_categories(
        self, rng: np.random.Generator, category: np.ndarray, times: np.ndarray
    ) -> np.ndarray:
        keys, order = self.by_category
        lo = np.searchsorted(keys, category * self.span)
        hi = np.searchsorted(
            keys, category * self.span + _seconds_since(self.origin, times), "right"
        )
        at = _uniform_in(rng, lo, hi)
        return np.where(at >= 0, order[at], -1)


@dataclass(frozen=True)
class _Following:
    """Who follows which publisher at one moment: sorted `user * n_publishers + publisher` keys."""

    keys: np.ndarray
    first: np.ndarray  # per user, where their keys start
    count: np.ndarray
    n_publishers: int

    @classmethod
    def at(cls, world: _World, moment: np.datetime64) -> _Following:
        active = (world.subscribed <= moment) & ~(world.unsubscribed <= moment)
        keys = np.sort(world.follower[active] * world.n_publishers + world.followed[active])
        count = np.bincount(keys // world.n_publishers, minlength=len(world.signup))
        return cls(keys, np.cumsum(count) - count, count, world.n_publishers)

    def follows(self, user: np.ndarray, publisher: np.ndarray) -> np.ndarray:
        key = user * self.n_publishers + publisher
        at = np.minimum(np.searchsorted(self.keys, key), max(len(self.keys) - 1, 0))
        return self.keys[at] == key if len(self.keys) else np.zeros(len(key), dtype=bool)

    def sample(self, rng: np.random.Generator, user: np.ndarray) -> np.ndarray:
        """One followed publisher per row; every user in `user` must follow at least one."""
        at = self.first[user] + (rng.random(len(user)) * self.count[user]).astype(np.int64)
        return self.keys[at] % self.n_publishers


def _play(
    conn: Connection,
    rng: np.random.Generator,
    world: _World,
    start: datetime,
    days: int,
    progress: Callable[[int, int], None] | None,
    flaws: _Flaws,
    app: app_counters.SimulatedApp | None,
) -> tuple[int, int]:
    """Simulate and insert day by day; returns (interactions, reading_progress) rows written."""
    start64 = np.datetime64(start, "us")
    end64 = start64 + days * DAY
    pending = _subscription_events(rng, world, start64, end64)
    clicks = np.zeros(len(world.published))
    reads: list[Columns] = []
    written = 0
    for day in range(days):
        day_start = start64 + day * DAY
        following = _Following.at(world, day_start)
        popularity = _popularity(world, day_start, clicks)
        events, day_reads = _one_day(rng, world, following, day_start, popularity)
        clicked = events["issue_id"][events["kind"] == "click"] - 1
        clicks = CLICK_MEMORY * clicks + np.bincount(clicked, minlength=len(clicks))
        log.debug(
            "day %d/%d (%s): %d interactions, %d reads",
            day + 1, days, str(day_start)[:10], len(events["kind"]), len(day_reads["progress"]),
        )  # fmt: skip
        due, pending = _split_due(_concat([pending, events]), day_start + DAY)
        del events  # a day of rows is the biggest thing held: keep one copy of it, not two
        rows = flaws.apply(due)
        written += _insert(conn, appdb.experience_interactions, rows)
        conn.commit()
        if app is not None:
            app.record(app_counters.interaction_counts(rows["issue_id"], rows["kind"]))
        reads.append(day_reads)
        if progress is not None:
            progress(day + 1, days)
    log.debug("%d interactions recorded after the window are not written", len(pending["kind"]))
    latest = _latest_progress(reads, end64)
    _insert(conn, appdb.reading_progress, latest)
    conn.commit()
    if app is not None:
        app.record(app_counters.read_counts(latest["issue_id"].to_numpy()))
    return written, len(latest)


@dataclass(frozen=True)
class _Flaws:
    """Breaks a share of interaction rows, one flaw per row, cycling through `KINDS`."""

    rng: np.random.Generator
    share: float
    KINDS = ("unknown kind", "negative dwell", "unknown issue", "future clock")

    def apply(self, rows: Columns) -> Columns:
        count = self.rng.binomial(len(rows["kind"]), self.share) if self.share else 0
        if count == 0:
            return rows
        picked = self.rng.choice(len(rows["kind"]), size=count, replace=False)
        flaw = np.arange(count) % len(self.KINDS)
        out = {name: np.array(values, copy=True) for name, values in rows.items()}
        out["kind"][picked[flaw == 0]] = "swipe"
        out["dwell_ms"] = out["dwell_ms"].astype(float)
        out["dwell_ms"][picked[flaw == 1]] = -1500.0
        out["issue_id"][picked[flaw == 2]] = 9_000_000
        out["occurred_at"][picked[flaw == 3]] = np.datetime64("2099-01-01T00:00:00", "us")
        return out


def _popularity(world: _World, day_start: np.datetime64, clicks: np.ndarray) -> np.ndarray:
    """Editorial pull of each issue today: quality, freshness and yesterday's clicks."""
    age: np.ndarray = day_start - world.published
    age_days = np.maximum(age / DAY, 0.0)
    return world.quality * 0.5 ** (age_days / POPULARITY_HALF_LIFE_DAYS) * (1 + clicks)


def _one_day(
    rng: np.random.Generator,
    world: _World,
    following: _Following,
    day_start: np.datetime64,
    popularity: np.ndarray,
) -> tuple[Columns, Columns]:
    """Every session of one day: (interaction rows, reads)."""
    sessions = _sessions(rng, world, following, day_start)
    shown = _impressions(rng, world, following, sessions, popularity)
    return _responses(rng, world, following, sessions, shown)


def _sessions(
    rng: np.random.Generator, world: _World, following: _Following, day_start: np.datetime64
) -> Columns:
    """Poisson(sessions_per_day) sessions per signed-up, not yet churned user."""
    active = (world.signup < day_start + DAY) & (world.churn > day_start)
    counts = rng.poisson(np.where(active, world.sessions_per_day, 0.0))
    user = np.repeat(np.arange(len(counts)), counts)
    hour = rng.choice(24, len(user), p=HOURLY)
    time = day_start + _seconds((hour + rng.random(len(user))) * 3600)
    keep = (time >= world.signup[user]) & (time < world.churn[user])
    user, time = user[keep], time[keep]
    n = len(user)
    device = np.where(
        rng.random(n) < PRIMARY_DEVICE_SHARE, world.device[user], rng.choice(3, n, p=DEVICE_SHARE)
    )
    draw = rng.random(n)
    surface = np.where(draw < SEARCH_SHARE, SEARCH, FEED)
    surface[
        (draw >= SEARCH_SHARE) & (draw < SEARCH_SHARE + EMAIL_SHARE) & (following.count[user] > 0)
    ] = EMAIL
    return {
        "user": user,
        "time": time,
        "device": device,
        "surface": surface,
        "lag": _upload_lag(rng, device),
        "session_id": _hex_ids(rng, n),
    }


def _upload_lag(rng: np.random.Generator, device: np.ndarray) -> np.ndarray:
    """Seconds by which a session reaches the server late: 1-30 h for a few offline phones."""
    late = MOBILE[device] & (rng.random(len(device)) < LATE_SESSION_SHARE)
    return np.where(late, rng.uniform(3600, 30 * 3600, len(device)), 0.0)


def _impressions(
    rng: np.random.Generator,
    world: _World,
    following: _Following,
    sessions: Columns,
    popularity: np.ndarray,
) -> Columns:
    """5-20 issues shown per session from a candidate mix, deduplicated, positions 0..k."""
    sizes = rng.integers(5, 21, len(sessions["user"]))
    session = np.repeat(np.arange(len(sizes)), sizes)
    user, time = sessions["user"][session], sessions["time"][session]
    source = _sources(rng, sessions["surface"][session], following.count[user] > 0)
    issue = np.full(len(session), -1)
    picks: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        RECENT: lambda rows: world.pick_recent(rng, time[rows]),
        POPULAR: lambda rows: world.pick_popular(rng, time[rows], popularity),
        SUBSCRIBED: lambda rows: world.pick_from_publishers(
            rng, following.sample(rng, user[rows]), time[rows]
        ),
        SEARCHED: lambda rows: world.pick_in_categories(
            rng, _sample_rows(rng, world.cumulative_taste[user[rows]]), time[rows]
        ),
    }
    for code, pick in picks.items():
        rows = source == code
        issue[rows] = pick(rows)
    missing = issue < 0
    source[missing] = EXPLORE
    issue[missing] = world.pick_any(rng, time[missing])
    keep = _first_in_session(session, issue, len(world.published)) & (issue >= 0)
    session, issue, source = session[keep], issue[keep], source[keep]
    position = np.arange(len(session)) - np.searchsorted(session, session)
    jitter = position * 1.2 + rng.random(len(session))
    return {
        "session": session,
        "user": sessions["user"][session],
        "issue": issue,
        "source": source,
        "position": position,
        "time": sessions["time"][session] + _seconds(jitter),
        "surface": sessions["surface"][session],
    }


def _sources(rng: np.random.Generator, surface: np.ndarray, follows: np.ndarray) -> np.ndarray:
    """Where each slot's candidate comes from: a mix on the feed, followed publishers by email."""
    source = rng.choice(len(SOURCES), len(surface), p=FEED_SOURCE_MIX)
    source[(source == SUBSCRIBED) & ~follows] = RECENT
    source[surface == EMAIL] = SUBSCRIBED
    source[surface == SEARCH] = SEARCHED
    return source


def _first_in_session(session: np.ndarray, issue: np.ndarray, n_issues: int) -> np.ndarray:
    """Mask keeping the first slot of each (session, issue): an issue is shown once a session."""
    _, first = np.unique(session * (n_issues + 1) + issue + 1, return_index=True)
    keep = np.zeros(len(session), dtype=bool)
    keep[first] = True
    return keep


def _responses(
    rng: np.random.Generator,
    world: _World,
    following: _Following,
    sessions: Columns,
    shown: Columns,
) -> tuple[Columns, Columns]:
    """What users do with what they were shown: the day's interaction rows and reads."""
    user, issue, surface = shown["user"], shown["issue"], shown["surface"]
    n = len(issue)
    taste = world.relative_taste[user, world.category[issue]]
    readable = (world.language[issue] == 0) | (world.language[issue] == world.user_language[user])
    appeal = (
        (0.03 + 0.97 * taste**1.5)
        * (0.6 + 0.8 * world.quality[issue])
        * np.where(following.follows(user, world.publisher[issue]), 1.5, 1.0)
        * np.where(readable, 1.0, 0.2)
    )
    email = surface == EMAIL
    opened = email & (rng.random(n) < np.minimum(0.15 + 0.6 * appeal, 0.95))
    bias = (1.0 + shown["position"]) ** -POSITION_DECAY
    p_click = np.minimum(CLICK_BASE[surface] * appeal * bias, 0.9)
    clicked = (rng.random(n) < p_click) & (opened | ~email)
    read = clicked & (rng.random(n) < 0.55 + 0.4 * taste)
    fraction, seconds = _reading(rng, taste, world.read_seconds[issue])
    dwell = np.where(read, seconds, 1.0 + rng.exponential(8.0, n))
    time = shown["time"]
    open_time = time + _seconds(1 + 30 * rng.random(n))
    click_time = np.where(email, open_time, time) + _seconds(0.5 + rng.exponential(6.0, n))
    saved = clicked & (rng.random(n) < 0.03 + 0.12 * taste)
    shared = clicked & (rng.random(n) < (0.01 + 0.04 * taste) * (0.5 + world.quality[issue]))
    hidden = ~clicked & (surface == FEED) & (rng.random(n) < 0.02 * (1.0 - taste) ** 3)
    context = _rec_context(time, shown["source"], world.variant[user], surface == FEED)
    parts = [
        _rows("impression", None, time, shown, context=context, position=True),
        _rows("email_open", opened, open_time, shown, position=True),
        _rows("click", clicked, click_time, shown, context=context, position=True, dwell=dwell),
        _rows("bookmark", saved, click_time + _seconds(dwell * rng.random(n)), shown),
        _rows("share", shared, click_time + _seconds(dwell), shown),
        _rows("hide", hidden, time + _seconds(0.5 + 5 * rng.random(n)), shown, position=True),
    ]
    events = _session_fields(rng, world, sessions, _concat(parts))
    started = click_time + _seconds(0.5)
    # The server stamps updated_at when the progress arrives: late for offline sessions too.
    lag = sessions["lag"][shown["session"]]
    stored = started + _seconds(seconds * rng.uniform(1.0, 1.3, n) + lag)
    reads = {
        "user_id": user[read] + 1,
        "issue_id": issue[read] + 1,
        "progress": fraction[read],
        "seconds_read": seconds[read],
        "started_at": started[read],
        "updated_at": stored[read],
        "session_id": sessions["session_id"][shown["session"][read]],
        "device": np.array(DEVICES, dtype=object)[sessions["device"][shown["session"][read]]],
    }
    return events, reads


def _reading(
    rng: np.random.Generator, taste: np.ndarray, full_seconds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Share of the issue read and seconds spent: some full reads, many partial, taste helps."""
    n = len(taste)
    partial = rng.beta(1.0 + 1.5 * taste, 2.0)
    fraction = np.clip(np.where(rng.random(n) < 0.05 + 0.35 * taste, 1.0, partial), 0.01, 1.0)
    return fraction, fraction * full_seconds * rng.lognormal(0.0, 0.25, n)


def _rows(
    kind: str,
    mask: np.ndarray | None,
    when: np.ndarray,
    shown: Columns,
    *,
    context: np.ndarray | None = None,
    position: bool = False,
    dwell: np.ndarray | None = None,
) -> Columns:
    """Interaction rows of one kind for the shown slots in `mask` (all when None)."""
    rows = np.arange(len(when)) if mask is None else np.flatnonzero(mask)
    nothing = np.full(len(rows), np.nan)
    return {
        "session": shown["session"][rows],
        "user_id": shown["user"][rows] + 1,
        "issue_id": shown["issue"][rows] + 1,
        "kind": np.full(len(rows), kind, dtype=object),
        "occurred_at": when[rows],
        "dwell_ms": nothing if dwell is None else np.round(dwell[rows] * 1000),
        "position": shown["position"][rows].astype(float) if position else nothing,
        "rec_context": np.full(len(rows), None, dtype=object) if context is None else context[rows],
    }


def _session_fields(
    rng: np.random.Generator, world: _World, sessions: Columns, events: Columns
) -> Columns:
    """Complete rows with what their session knows: id, surface, device, country, upload lag."""
    session = events.pop("session")
    delay = sessions["lag"][session] + 0.05 + rng.exponential(0.4, len(session))
    events["recorded_at"] = events["occurred_at"] + _seconds(delay)
    events["session_id"] = sessions["session_id"][session]
    events["surface"] = np.array(SURFACES, dtype=object)[sessions["surface"][session]]
    events["device"] = np.array(DEVICES, dtype=object)[sessions["device"][session]]
    events["country"] = world.country[events["user_id"] - 1]
    return events


def _rec_context(
    time: np.ndarray, source: np.ndarray, variant: np.ndarray, on_feed: np.ndarray
) -> np.ndarray:
    """JSON `rec_context` of feed slots: the live table version, candidate source, A/B variant."""
    version_day = (time - PUBLISH_HOUR).astype("datetime64[D]")
    first = version_day.min() if len(time) else np.datetime64("1970-01-01")
    day = (version_day - first).astype(np.int64)
    code = (day * len(SOURCES) + source) * len(VARIANTS) + variant
    unique, inverse = np.unique(code, return_inverse=True)
    texts = []
    for value in unique.tolist():
        rest, variant_code = divmod(value, len(VARIANTS))
        day_code, source_code = divmod(rest, len(SOURCES))
        version = (first + day_code * DAY + PUBLISH_HOUR).astype("datetime64[us]").item()
        texts.append(
            json.dumps(
                {
                    "table_version": batch_key(version),
                    "source": SOURCES[source_code],
                    "variant": VARIANTS[variant_code],
                }
            )
        )
    context = np.array(texts, dtype=object)[inverse]
    context[~on_feed] = None
    return context


def _subscription_events(
    rng: np.random.Generator, world: _World, start: np.datetime64, end: np.datetime64
) -> Columns:
    """Rows for subscription changes inside the window, on the publisher's latest issue."""
    parts = []
    for kind, times, surface in (
        ("subscribe", world.subscribed, "reader"),
        ("unsubscribe", world.unsubscribed, "email"),
    ):
        rows = np.flatnonzero((times >= start) & (times < end))
        when, user = times[rows], world.follower[rows]
        n = len(rows)
        device = world.device[user]
        lag = _upload_lag(rng, device)
        parts.append(
            {
                "user_id": user + 1,
                "issue_id": _latest_issue(world, world.followed[rows], when) + 1,
                "kind": np.full(n, kind, dtype=object),
                "occurred_at": when,
                "dwell_ms": np.full(n, np.nan),
                "position": np.full(n, np.nan),
                "rec_context": np.full(n, None, dtype=object),
                "recorded_at": when + _seconds(lag + 0.05 + rng.exponential(0.4, n)),
                "session_id": _hex_ids(rng, n),
                "surface": np.full(n, surface, dtype=object),
                "device": np.array(DEVICES, dtype=object)[device],
                "country": world.country[user],
            }
        )
    return _concat(parts)


def _latest_issue(world: _World, publisher: np.ndarray, times: np.ndarray) -> np.ndarray:
    keys, order = world.by_publisher
    hi = np.searchsorted(
        keys, publisher * world.span + _seconds_since(world.origin, times), "right"
    )
    return order[hi - 1]


def _latest_progress(reads: list[Columns], end: np.datetime64) -> pd.DataFrame:
    """One row per (user, issue): the furthest progress, total time, first start, last update."""
    frame = pd.DataFrame(_concat(reads))
    frame = frame[frame["updated_at"] < end].sort_values("updated_at", kind="stable")
    return frame.groupby(["user_id", "issue_id"], as_index=False, sort=True).agg(
        progress=("progress", "max"),
        seconds_read=("seconds_read", "sum"),
        started_at=("started_at", "min"),
        updated_at=("updated_at", "max"),
        session_id=("session_id", "last"),
        device=("device", "last"),
    )


# -- small helpers -----------------------------------------------------------------------------


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _seconds(values: Any) -> np.ndarray:
    """Float seconds as microsecond timedeltas."""
    return np.round(np.asarray(values, dtype=float) * 1e6).astype("timedelta64[us]")


def _between(lo: Any, hi: Any, share: np.ndarray) -> np.ndarray:
    """The moments `share` of the way from `lo` to `hi`, element-wise."""
    span: np.ndarray = np.asarray(hi - lo)
    return np.asarray(lo + _seconds(span / np.timedelta64(1, "s") * share))


def _seconds_since(origin: np.datetime64, times: np.ndarray) -> np.ndarray:
    return np.maximum((times - origin) // np.timedelta64(1, "s"), 0).astype(np.int64)


def _sorted_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    return keys[order], order


def _uniform_in(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A uniform index in [lo, hi) per row; -1 where the range is empty."""
    drawn = lo + (rng.random(len(lo)) * (hi - lo)).astype(np.int64)
    return np.where(hi > lo, drawn, -1)


def _hex_ids(rng: np.random.Generator, count: int, width: int = 16) -> np.ndarray:
    """Random hex ids, built without a Python loop: digits as code points viewed as strings."""
    digits = HEX[rng.integers(0, 16, (count, width))].astype(np.uint32)
    return digits.view(f"<U{width}").ravel()


def _concat(parts: list[Columns]) -> Columns:
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _take(columns: Columns, rows: np.ndarray) -> Columns:
    return {name: values[rows] for name, values in columns.items()}


def _split_due(events: Columns, moment: np.datetime64) -> tuple[Columns, Columns]:
    """Rows the server recorded before `moment`, in recorded order, and those still in flight."""
    recorded = events["recorded_at"]
    due = np.flatnonzero(recorded < moment)
    due = due[np.argsort(recorded[due], kind="stable")]
    return _take(events, due), _take(events, np.flatnonzero(recorded >= moment))


# -- bulk writes -------------------------------------------------------------------------------

_MARKERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def _tune_for_bulk_load(conn: Connection) -> None:
    # The simulation can always be rerun, so SQLite may skip fsyncs while it loads.
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA synchronous=OFF")
        conn.exec_driver_sql("PRAGMA cache_size=-65536")
        conn.exec_driver_sql("PRAGMA temp_store=MEMORY")


def _insert(conn: Connection, table: Table, columns: Mapping[str, Any]) -> int:
    """Insert the table's columns found in `columns` through the DBAPI, in chunks of rows."""
    names = [column.name for column in table.columns if column.name in columns]
    marker = _MARKERS[conn.dialect.paramstyle]
    sql = (
        f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join([marker] * len(names))})"
    )
    sqlite = conn.dialect.name == "sqlite"
    arrays = [np.asarray(columns[name]) for name in names]
    total = len(arrays[0])
    for offset in range(0, total, CHUNK_ROWS):
        chunk = [
            _db_values(values[offset : offset + CHUNK_ROWS], table.c[name].type, sqlite)
            for name, values in zip(names, arrays, strict=True)
        ]
        conn.exec_driver_sql(sql, list(zip(*chunk, strict=True)))
    return total


def _db_values(values: np.ndarray, sql_type: TypeEngine[Any], sqlite: bool) -> list[Any]:
    """One column as the Python values the driver takes; NaN and NaT become NULL."""
    missing = pd.isna(values)
    if values.dtype.kind == "M":
        stamps = values.astype("datetime64[us]")
        if sqlite:  # SQLAlchemy's own text format, so its range filters compare correctly
            out = np.strings.replace(np.datetime_as_string(stamps, unit="us"), "T", " ")
            out = out.astype(object)
        else:
            out = stamps.astype(object)
    elif isinstance(sql_type, Integer) and values.dtype.kind == "f":
        out = np.where(missing, 0, values).astype(np.int64).astype(object)
    else:
        out = values.astype(object)
    out[missing] = None
    return list(out.tolist())
