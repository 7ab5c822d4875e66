"""Semantic search with the default (offline) embedder on a corpus written for this test.

Sixteen short documents on distinct subjects, and queries that say what a person
is looking for in other words than the document's. The right file must be among
the first five results for every query and first for most; results carry line
ranges that exist in the file and a snippet from those lines; scoped searches stay
in their directory; unindexed and deleted files are handled; PDF and DOCX text is
searchable.
"""

from __future__ import annotations

import pytest

import nexusfs
from tests.oracles import assert_fsck_clean
from tests.search_helpers import (
    NOTES,
    STORE_SETTINGS,
    assert_semantic_index,
    indexed_semantic_store,
    make_docx,
    make_pdf,
    semantic_stack,  # noqa: F401  (autouse: every test here needs the semantic stack)
)

SETTINGS = {**STORE_SETTINGS, "semantic": True}

DOCS = {
    "kitchen/sourdough.md": """# Sourdough bread

Feed the starter with equal weights of flour and water the evening before.
A lively culture doubles within six hours and smells pleasantly sour.
Mix the dough, let it rest, then stretch and fold it every half hour.
Bulk fermentation takes most of a day in a cool kitchen.
Shape the loaf, proof it overnight in the fridge, and bake it in a hot Dutch oven.
""",
    "garden/tomatoes.txt": """Growing tomatoes

Plant seedlings deep, water at the base rather than on the foliage,
and pinch out the side shoots that sprout between stem and branch.
Early blight shows as brown rings on the lower leaves; remove them,
mulch the soil and spray copper fungicide in humid weather.
""",
    "money/mortgage.md": """# Choosing a mortgage

A fixed rate keeps the monthly repayment the same for the whole term.
A variable (tracker) rate follows the central bank and may rise or fall.
Amortisation tables show how much of each instalment pays off principal.
Refinancing can pay off when rates drop well below your current deal.
""",
    "code/lru.py": '''"""A least-recently-used cache with a fixed capacity."""

from collections import OrderedDict


class LRUCache:
    def __init__(self, capacity):
        self.capacity = capacity
        self.items = OrderedDict()

    def get(self, key):
        self.items.move_to_end(key)
        return self.items[key]

    def put(self, key, value):
        self.items[key] = value
        self.items.move_to_end(key)
        if len(self.items) > self.capacity:
            self.items.popitem(last=False)  # discard the stalest entry
''',
    "code/backoff.py": '''"""Retry a failing operation with exponential backoff and jitter."""

import random
import time


def retry(operation, attempts=5, base=0.5):
    for attempt in range(attempts):
        try:
            return operation()
        except ConnectionError:
            delay = base * 2 ** attempt
            time.sleep(delay + random.uniform(0, delay))
    raise TimeoutError("gave up")
''',
    "health/sleep.md": """# Sleeping better

Keep a regular bedtime, even at weekends, so the circadian rhythm stays steady.
Avoid caffeine after lunch: it lingers in the blood for many hours.
A dark, cool bedroom and no screens in the last hour help insomnia.
""",
    "outdoors/hiking_kit.txt": """Packing for a hut-to-hut hike

Boots broken in, rain jacket, warm fleece, sun hat and sunscreen.
Water bottles, snacks, a first-aid kit, blister plasters and a head torch.
A paper map and compass in case the phone battery runs out on the trail.
""",
    "science/eclipse.md": """# Solar eclipses

When the Moon passes exactly between the Sun and the Earth it casts a shadow.
Inside the umbra the sky darkens at midday and the corona becomes visible.
Never look at the Sun without certified eclipse glasses.
""",
    "pets/kitten_litter.txt": """Litter training a kitten

Put the tray in a quiet corner away from the food bowls.
Place the kitten in the box after meals and naps; cats prefer unscented litter.
Scoop it daily; a dirty tray is the usual reason for accidents elsewhere.
""",
    "cars/flat_tyre.md": """# Changing a flat tyre

Park on firm ground, switch on the hazard lights and set the handbrake.
Loosen the wheel nuts a little before you lift the car with the jack.
Swap in the spare wheel, tighten the nuts crosswise, then lower the car.
""",
    "music/guitar_tuning.txt": """Tuning a guitar

Standard tuning from the thickest string to the thinnest is E A D G B E.
Use an electronic tuner or match each string to the fifth fret of the one above it.
Stretch new strings, they go flat while they settle.
""",
    "history/printing_press.md": """# The printing press

Around 1450 Johannes Gutenberg in Mainz combined movable metal type,
oil-based ink and a screw press adapted from wine making.
Printed books became far cheaper than hand-copied manuscripts and spread literacy across Europe.
""",
    "ops/backups.md": """# Backups

Follow the 3-2-1 rule: three copies of your data, on two kinds of media, one of them offsite.
Automate the schedule, encrypt what leaves the building,
and rehearse restores: a backup nobody has restored is only a hope.
""",
    "science/boiling_altitude.txt": """Boiling at altitude

Air pressure falls as you climb, so water boils below 100 degrees Celsius.
At 3000 metres it boils around 90 degrees, so pasta and eggs take longer to cook.
Pressure cookers raise the boiling point again.
""",
    "astro/mars_rovers.md": """# Rovers on Mars

Curiosity and Perseverance drive across the red planet studying rocks and ancient lake beds.
Perseverance caches soil samples in tubes for a future mission to bring back to Earth.
""",
    "handbook/office.md": """# Office handbook

## Holidays

Everyone has 25 days of paid leave a year, plus the public holidays of the region.
Ask your manager at least two weeks before a longer absence, and put it in the team calendar.
Unused days carry over until the end of March; after that they are gone.
Part-time staff get the same number of weeks, counted in their own working days.
Sick days are not holidays: call in before ten o'clock and bring a note after three days.

## Expenses

Keep every receipt for travel, taxis, hotels and meals on business trips.
Submit them in the expense tool within 30 days; finance reimburses them with the next salary.
Flights and trains are booked by the travel desk, not by you, so they need no receipt.
Meals are covered up to a daily allowance that depends on the country you visit.
Alcohol and personal items are never refunded, and neither are fines for speeding.

## Building access

Your badge opens the front door between 7 and 20 o'clock on working days.
Visitors sign in at reception and wear a guest badge for the whole visit.
Report a lost badge to reception the same day so that it can be blocked at once.
Outside opening hours the alarm is armed; the code is only given to the facilities team.
Fire exits are on every floor; do not prop them open and do not block them with boxes.

## Parking

The car park behind the building has twenty spaces, first come first served.
Two spaces near the door are kept for people with disabilities and two for electric cars.
Bicycles go in the locked shed next to the entrance; showers are in the basement.
""",
}

#: (query, the file that must come first or near the top)
QUERIES = [
    ("how do I keep a naturally leavened loaf rising", "kitchen/sourdough.md"),
    ("brown patches on the leaves of my vegetable plants", "garden/tomatoes.txt"),
    ("should my home loan interest be locked or follow the market", "money/mortgage.md"),
    ("evict whatever entry was used longest ago when the store is full", "code/lru.py"),
    ("try a network call again with growing pauses between attempts", "code/backoff.py"),
    ("I can't fall asleep at night after drinking coffee", "health/sleep.md"),
    ("what to take on a multi-day mountain trek", "outdoors/hiking_kit.txt"),
    ("the moon hides the sun and it gets dark during the day", "science/eclipse.md"),
    ("teaching a young cat where to go to the toilet", "pets/kitten_litter.txt"),
    ("puncture on the road, how to put the spare wheel on", "cars/flat_tyre.md"),
    ("get the six strings of my instrument in pitch", "music/guitar_tuning.txt"),
    ("who made books cheap to produce in the fifteenth century", "history/printing_press.md"),
    ("keep extra copies of my files somewhere else in case the disk dies", "ops/backups.md"),
    ("why does cooking spaghetti take longer high up in the mountains", "science/boiling_altitude.txt"),
    ("robots exploring another planet collecting rock samples", "astro/mars_rovers.md"),
    ("how do I get my money back for a taxi on a work trip", "handbook/office.md"),
]

ROOT = "/docs"


@pytest.fixture(scope="module")
def sem(tmp_path_factory):
    home = tmp_path_factory.mktemp("semantic") / "store"
    nx = nexusfs.connect(str(home), **SETTINGS)
    try:
        nx.write_many({f"{ROOT}/{p}": t.encode() for p, t in DOCS.items()})
        assert nx.wait_for_index(120)
        assert_semantic_index(nx)
        yield nx
    finally:
        nx.close()


def _lines(nx, path: str) -> list[str]:
    return nx.read_text(path).split("\n")


#: queries sharing no word with any note (so BM25 finds nothing), and the note that answers each
VECTOR_ONLY = [("astronomy observatory", "stars.md"), ("cycling maintenance", "bikes.md"),
               ("baking a loaf", "bread.md")]


def test_a_fresh_store_ranks_by_vectors(tmp_path):
    """Not behind the module's corpus: a new store with semantic search on has vector search,
    and its semantic queries are ranked by the vectors (the words alone find nothing here)."""
    nx = nexusfs.connect(str(tmp_path / "store"), **{**SETTINGS, "background_indexing": False})
    try:
        assert nx.index_status().vector_search, nx.index_status()
        nx.write_many({f"/n/{name}": text.encode() for name, text in NOTES.items()})
        assert nx.reindex() == len(NOTES)
        assert_semantic_index(nx)
        searcher = nx.store.searcher
        for query, expected in VECTOR_ONLY:
            assert searcher.index.bm25_chunks(searcher._bm25_expression(query), 50) == [], query
            results = nx.search(query, k=3)
            assert results.note is None
            assert [h.path for h in results][:1] == [f"/n/{expected}"], (query, [str(h) for h in results])
    finally:
        nx.close()


def test_index_has_vectors(sem):
    st = sem.index_status()
    assert st.embedder.startswith("wordllama")
    assert st.vector_search
    assert st.files == len(DOCS) and st.docs == len(DOCS)
    assert st.chunks >= len(DOCS)
    assert (st.pending, st.failing) == (0, 0)


@pytest.mark.parametrize("query,expected", QUERIES, ids=[q for q, _f in QUERIES])
def test_paraphrased_query_finds_the_file(sem, query, expected):
    results = sem.search(query, ROOT, k=10)
    files = list(dict.fromkeys(h.path for h in results))
    assert f"{ROOT}/{expected}" in files[:5], files[:5]


def test_most_queries_rank_the_file_first(sem):
    firsts = []
    for query, expected in QUERIES:
        results = sem.search(query, ROOT, k=5)
        firsts.append(bool(results) and results[0].path == f"{ROOT}/{expected}")
    misses = [q for (q, _e), ok in zip(QUERIES, firsts, strict=True) if not ok]
    assert sum(firsts) >= 0.75 * len(QUERIES), misses


def test_hits_have_real_line_ranges_and_snippets(sem):
    for query, _expected in QUERIES:
        results = sem.search(query, ROOT, k=8)
        assert 0 < len(results) <= 8
        scores = [h.score for h in results]
        assert scores == sorted(scores, reverse=True)
        assert all(0 < s <= 1 for s in scores)
        seen = set()
        for h in results:
            assert (h.path, h.start_line) not in seen
            seen.add((h.path, h.start_line))
            lines = _lines(sem, h.path)
            assert 1 <= h.start_line <= h.end_line <= len(lines), (h, len(lines))
            piece = [ln.strip() for ln in lines[h.start_line - 1 : h.end_line]]
            assert piece[0] and piece[-1], "a range starts and ends on text"
            assert h.snippet and any(h.snippet == ln[: len(h.snippet)] for ln in piece if ln), (h, piece)


def test_section_of_a_long_file(sem):
    results = sem.search("how do I get my money back for a taxi on a work trip", ROOT, k=3)
    hit = results[0]
    assert hit.path == f"{ROOT}/handbook/office.md"
    lines = _lines(sem, hit.path)
    expenses = lines.index("## Expenses") + 1  # 1-based
    receipt = next(i for i, ln in enumerate(lines, 1) if ln.startswith("Keep every receipt"))
    assert hit.start_line <= receipt <= hit.end_line
    assert expenses - 1 <= hit.start_line
    assert hit.end_line < lines.index("## Building access") + 1


def test_scoped_search(sem):
    results = sem.search("try a network call again with growing pauses between attempts", f"{ROOT}/code", k=10)
    assert results and all(h.path.startswith(f"{ROOT}/code/") for h in results)
    assert results[0].path == f"{ROOT}/code/backoff.py"
    # a scope whose files rank low globally is still searched
    results = sem.search("stretch and fold", f"{ROOT}/kitchen", k=3)
    assert [h.path for h in results][:1] == [f"{ROOT}/kitchen/sourdough.md"]
    results = sem.search("what to take on a multi-day mountain trek", f"{ROOT}/science", k=10)
    assert all(h.path.startswith(f"{ROOT}/science/") for h in results)
    assert f"{ROOT}/outdoors/hiking_kit.txt" not in {h.path for h in results}


def test_search_scoped_to_a_directory_without_files(fresh):
    # (its own store: the module's `sem` is shared, and no test may change it)
    fresh.mkdir(f"{ROOT}/empty")
    assert list(fresh.search("anything at all", f"{ROOT}/empty")) == []
    assert list(fresh.search("anything at all", ROOT))  # the same query finds something elsewhere


def test_k_and_errors(sem):
    assert len(sem.search("bread", ROOT, k=1)) == 1
    assert len(sem.search("the", ROOT, k=50)) <= 50
    with pytest.raises(OSError) as exc:
        sem.search("   ", ROOT)
    assert exc.value.errno == 22
    with pytest.raises(OSError) as exc:
        sem.search("bread", f"{ROOT}/missing")
    assert exc.value.errno == 2
    with pytest.raises(OSError) as exc:
        sem.search("bread", f"{ROOT}/kitchen/sourdough.md")
    assert exc.value.errno == 20


@pytest.fixture
def fresh(store_dir):
    """A semantic store whose indexer runs only when the test says so."""
    with indexed_semantic_store(store_dir, {f"{ROOT}/{p}": t.encode() for p, t in DOCS.items()}) as nx:
        yield nx


def test_pending_files_are_counted(fresh):
    nx = fresh
    assert nx.search("bread", ROOT).pending == 0
    nx.write_bytes(f"{ROOT}/new/volcano.md", b"# Volcanoes\n\nMagma rises, the mountain erupts and lava flows downhill.\n",
                   parents=True)
    results = nx.search("a mountain spewing molten rock", ROOT)
    assert results.pending == 1
    assert f"{ROOT}/new/volcano.md" not in {h.path for h in results}
    nx.reindex()
    results = nx.search("a mountain spewing molten rock", ROOT)
    assert results.pending == 0
    assert results[0].path == f"{ROOT}/new/volcano.md"


def test_deleted_and_overwritten_files_never_appear(fresh):
    nx = fresh
    query = "how do I keep a naturally leavened loaf rising"
    assert nx.search(query, ROOT)[0].path == f"{ROOT}/kitchen/sourdough.md"
    nx.delete(f"{ROOT}/kitchen/sourdough.md")
    results = nx.search(query, ROOT, k=20)
    assert f"{ROOT}/kitchen/sourdough.md" not in {h.path for h in results}
    assert results.pending == 0
    # overwritten: the old text no longer answers for the file, even before reindexing
    nx.write_bytes(f"{ROOT}/cars/flat_tyre.md", b"Nothing about cars here any more.\n")
    results = nx.search("puncture on the road, how to put the spare wheel on", ROOT, k=20)
    assert f"{ROOT}/cars/flat_tyre.md" not in {h.path for h in results}
    assert results.pending == 1
    # renamed: found under the new name only
    nx.rename(f"{ROOT}/music/guitar_tuning.txt", f"{ROOT}/music/strings.txt")
    results = nx.search("get the six strings of my instrument in pitch", ROOT, k=5)
    assert results[0].path == f"{ROOT}/music/strings.txt"
    assert f"{ROOT}/music/guitar_tuning.txt" not in {h.path for h in results}
    nx.reindex()
    results = nx.search("how do I keep a naturally leavened loaf rising", ROOT, k=20)
    assert f"{ROOT}/kitchen/sourdough.md" not in {h.path for h in results}
    assert_fsck_clean(nx)


def test_copies_and_links_report_every_path(fresh):
    nx = fresh
    nx.copy(f"{ROOT}/pets/kitten_litter.txt", f"{ROOT}/pets/copy.txt")
    nx.link(f"{ROOT}/pets/kitten_litter.txt", f"{ROOT}/pets/hardlink.txt")
    docs = nx.index_status().docs
    nx.reindex()
    assert nx.index_status().docs == docs
    results = nx.search("teaching a young cat where to go to the toilet", ROOT, k=5)
    # one hit for the three names of one content (a copy and a hard link), listing them all
    assert results[0].paths == (f"{ROOT}/pets/copy.txt", f"{ROOT}/pets/hardlink.txt",
                                f"{ROOT}/pets/kitten_litter.txt")
    assert results[0].path == f"{ROOT}/pets/copy.txt"
    assert all(len(h.paths) == 1 for h in results[1:])


def test_pdf_and_docx_are_searchable(fresh):
    nx = fresh
    nx.write_many({
        f"{ROOT}/papers/bees.pdf": make_pdf([
            "Keeping honey bees",
            "A hive holds one queen, thousands of workers and a few drones.",
            "The beekeeper smokes the entrance before lifting the frames of comb.",
            "Honey is harvested in late summer, leaving enough for the colony's winter.",
        ]),
        f"{ROOT}/papers/glaciers.docx": make_docx([
            "Retreating glaciers",
            "Alpine ice sheets have lost much of their volume since 1850.",
            "Meltwater feeds rivers in summer, but shrinking ice threatens that supply.",
            "Moraines mark how far the ice once reached down the valley.",
        ]),
    })
    nx.reindex()
    st = nx.index_status()
    assert st.failing == 0 and st.by_kind.get("docx") == 1
    results = nx.search("looking after a bee colony through the year", ROOT, k=5)
    assert results[0].path == f"{ROOT}/papers/bees.pdf"
    lines = results[0]
    assert lines.start_line >= 1 and lines.snippet
    results = nx.search("mountain ice melting because the climate warms", ROOT, k=5)
    assert results[0].path == f"{ROOT}/papers/glaciers.docx"
    assert "ice" in results[0].snippet.lower() or "glacier" in results[0].snippet.lower()
    # grep does not read the DOCX (a zip archive: binary)
    assert nx.grep("Moraines", ROOT) == []


def test_ranking_does_not_depend_on_k(sem):
    """Asking for more results than the scope holds (the scope's chunks are then ranked
    directly) gives the same order, with scores on the same scale."""
    for query, _expected in QUERIES:
        few = sem.search(query, ROOT, k=3)
        many = sem.search(query, ROOT, k=60)
        assert many[0].path == few[0].path, query
        assert [h.path for h in many[:3]] == [h.path for h in few], query
        assert many[-1].score < many[0].score <= 1.0
