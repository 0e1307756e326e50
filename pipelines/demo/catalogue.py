"""The demo catalogue: publishers and their newsletter issues, with titles, previews and tags.

Each category has its own topic words (`VOCABULARY`) and each language its own filler words
(`FILLER`), so a text's words say what it is about and the content models have a signal to find.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from pipelines.demo.arrays import seconds

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

TOPIC_SHARE = 0.7  # of an issue's words drawn from its category's vocabulary


def publishers(rng: np.random.Generator, count: int, start: datetime) -> pd.DataFrame:
    """Publishers with a main category (round robin, so every category gets its share)."""
    category = np.resize(rng.permutation(len(CATEGORIES)), count)
    created = np.datetime64(start, "us") - seconds(rng.uniform(60, 900, count) * 86_400)
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


def issues(
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
    published = np.datetime64(start, "us") + seconds(offsets)
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
            "created_at": published - seconds(rng.uniform(600, 2 * 86_400, count)),
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
