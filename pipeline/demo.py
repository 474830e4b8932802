"""A generated demo corpus: a few hundred short English texts in ten topics, with title, category and year."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TOPICS: dict[str, tuple[list[str], list[str]]] = {
    "cooking": (
        [
            "sourdough bread",
            "a tomato sauce",
            "fresh pasta",
            "a vegetable curry",
            "chocolate cake",
            "grilled salmon",
            "a lentil soup",
            "roast chicken",
            "pancakes",
            "a green salad",
        ],
        [
            "How to make {s} at home with simple ingredients.",
            "The secret to {s} is patience and a hot oven.",
            "A weeknight recipe for {s} that takes thirty minutes.",
            "Common mistakes cooks make with {s}.",
            "Chefs share their favourite twist on {s}.",
            "Seasoning {s} with herbs, garlic and a little salt.",
        ],
    ),
    "astronomy": (
        [
            "Mars",
            "the Moon",
            "Jupiter's moons",
            "a distant galaxy",
            "a black hole",
            "the Sun",
            "Saturn's rings",
            "a comet",
            "an exoplanet",
            "the Milky Way",
        ],
        [
            "A telescope captured new images of {s}.",
            "Astronomers measured the orbit of {s} with great precision.",
            "Scientists debate whether {s} could host liquid water.",
            "A space probe is on its way to {s}.",
            "What the light from {s} tells us about the early universe.",
            "Amateur stargazers can spot {s} tonight.",
        ],
    ),
    "football": (
        [
            "the home team",
            "the striker",
            "the goalkeeper",
            "the young midfielder",
            "the national side",
            "the league leaders",
            "the coach",
            "the defenders",
            "the captain",
            "the visiting club",
        ],
        [
            "{S} scored twice in the second half to win the match.",
            "{S} lost on penalties after extra time.",
            "Fans cheered as {s} lifted the cup in the stadium.",
            "An injury keeps {s} out of the next game.",
            "{S} signed a new contract before the transfer deadline.",
            "Tactics: how {s} pressed high up the pitch.",
        ],
    ),
    "finance": (
        [
            "interest rates",
            "the stock market",
            "inflation",
            "mortgage costs",
            "the central bank",
            "bond yields",
            "household savings",
            "the currency",
            "retirement funds",
            "small business loans",
        ],
        [
            "Economists expect {s} to rise again next quarter.",
            "Investors reacted nervously to news about {s}.",
            "What higher {s} mean for your monthly budget.",
            "A report warns that {s} could hurt growth.",
            "Analysts explain the link between {s} and prices.",
            "Why {s} matter for people saving money.",
        ],
    ),
    "health": (
        [
            "sleep",
            "regular exercise",
            "a balanced diet",
            "drinking water",
            "stress",
            "vitamin D",
            "walking",
            "screen time",
            "meditation",
            "sugar",
        ],
        [
            "Doctors say {s} has a large effect on heart health.",
            "A study links {s} to a longer life.",
            "Simple habits around {s} that improve your mood.",
            "How {s} affects the immune system.",
            "Nurses recommend paying attention to {s} in winter.",
            "Researchers tracked {s} in ten thousand adults.",
        ],
    ),
    "technology": (
        [
            "the new smartphone",
            "a laptop battery",
            "cloud storage",
            "a password manager",
            "the home router",
            "an open source database",
            "machine learning models",
            "the web browser",
            "electric car software",
            "a programming language",
        ],
        [
            "A security flaw was found in {s}.",
            "Engineers improved the speed of {s} in the latest update.",
            "Reviewers tested {s} for a month.",
            "How to set up {s} in five minutes.",
            "Developers released a new version of {s}.",
            "Why {s} uses so much memory.",
        ],
    ),
    "travel": (
        [
            "Lisbon",
            "the Scottish Highlands",
            "Kyoto",
            "a Greek island",
            "the Alps",
            "Patagonia",
            "Iceland",
            "the Amazon rainforest",
            "Marrakech",
            "New Zealand",
        ],
        [
            "A week-long itinerary for {s} on a budget.",
            "The best time of year to visit {s}.",
            "Travellers describe the food and culture of {s}.",
            "Hiking trails and viewpoints in {s}.",
            "Trains, ferries and buses: getting around {s}.",
            "Where to stay when visiting {s} with children.",
        ],
    ),
    "music": (
        [
            "the orchestra",
            "a jazz quartet",
            "the rock band",
            "a young pianist",
            "the choir",
            "a folk singer",
            "the opera company",
            "a hip hop artist",
            "the violinist",
            "an electronic producer",
        ],
        [
            "{S} released an album recorded live on tour.",
            "Critics praised {s} after the concert last night.",
            "{S} played a sold-out show at the festival.",
            "An interview with {s} about songwriting.",
            "{S} announced a world tour for next summer.",
            "How {s} rehearses before a big performance.",
        ],
    ),
    "history": (
        [
            "the Roman Empire",
            "medieval castles",
            "the industrial revolution",
            "ancient Egypt",
            "the printing press",
            "the Silk Road",
            "the French Revolution",
            "Viking explorers",
            "the first railways",
            "the Renaissance",
        ],
        [
            "Historians explain the rise and fall of {s}.",
            "Archaeologists found new evidence about {s}.",
            "A museum exhibition tells the story of {s}.",
            "How {s} changed daily life for ordinary people.",
            "Documents reveal the economics behind {s}.",
            "Ten surprising facts about {s}.",
        ],
    ),
    "nature": (
        [
            "wild bees",
            "the coral reef",
            "migrating birds",
            "old-growth forests",
            "river otters",
            "mountain wolves",
            "sea turtles",
            "wetlands",
            "the desert in spring",
            "whales",
        ],
        [
            "Conservationists are working to protect {s}.",
            "Climate change threatens {s}, scientists warn.",
            "A documentary follows {s} through a year.",
            "Volunteers counted {s} along the coast.",
            "Why {s} matter for the whole ecosystem.",
            "Photographers captured rare images of {s}.",
        ],
    ),
}


def demo_table(seed: int = 7) -> pa.Table:
    """The demo corpus as an Arrow table: id, title, category, year, text."""
    rng = random.Random(seed)
    rows = []
    for category, (subjects, templates) in TOPICS.items():
        for subject in subjects:
            for template in rng.sample(templates, 3):
                text = template.format(s=subject, S=subject[0].upper() + subject[1:])
                rows.append(
                    {
                        "title": " ".join(text.split()[:6]).rstrip(".,:"),
                        "category": category,
                        "year": rng.randint(1995, 2026),
                        "text": text,
                    }
                )
    rng.shuffle(rows)
    for i, row in enumerate(rows):
        row["id"] = i + 1
    return pa.Table.from_pylist(rows).select(["id", "title", "category", "year", "text"])


def write_demo(path: Path) -> int:
    table = demo_table()
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table.num_rows


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-data/demo.parquet")
    print(f"wrote {write_demo(target)} rows to {target}")
