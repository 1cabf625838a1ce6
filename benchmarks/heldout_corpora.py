"""Held-out corpora for the planner accuracy benchmark: kinds no law card was calibrated or tuned
on, written deterministically (fixed seed, standard library only).

    python benchmarks/heldout_corpora.py runs/heldout        # writes the corpora below into that folder

* ``pb_digits``   — a phone book: "Phone number of <first> <last>:" → a 10-digit number
* ``key_sentence`` — "Fact <code>:" → a six-word sentence drawn from a word list
* ``prose_keys``  — "<work>, part <k>:" → ~45-word passages of public-domain prose
* ``chat``        — {"messages"}: a fictional railway's help desk, one fact per answer
* ``pb_large``    — the phone-book kind at ≥ 4,000 target tokens

and, with ``--fresh``, two corpora written after the ``unigram`` predictor was chosen on the five
above, to test it on data it was not chosen on (docs/results.md §2):

* ``animal_codes`` — "Code <n>:" → five animal names drawn from 16
* ``lockers``      — "Locker of <name>:" → "row <d>, shelf <letter>, box <dd>"

and, with ``--fresh2``, three more written at the start of stop 16, before any predictor change of
that stop, of kinds none of the seven contains:

* ``hex_keys``  — "Vault key of <name>:" → twelve hexadecimal characters
* ``glossary``  — "Define <invented word>:" → "a <adjective> <noun> that <verb phrase>." from 16 of each
* ``birthdays`` — "Birthday of <first> <last>:" → "<day> <month> <year>", 1900–2019

and, with ``--fresh3``, three written in stop 16 for a test of the in-context predictor candidate,
their predictions recorded before any of them was trained (docs/results.md §2):

* ``pantry``    — "Recipe <n>:" → four ingredients drawn from 12
* ``tracking``  — "Parcel <code>:" → a 12-digit tracking number in groups of four
* ``flights``   — "Flight <XX><nnn>:" → "gate <letter><nn>, departs <hh>:<mm>"

and, with ``--fresh4``, two written in stop 22 to ask whether the kind of *key* moves coverage when
the targets stay the same (the planner prices targets only), their predictions recorded before
they were trained (docs/results.md §2):

* ``pb_numkeys``     — ``pb_digits``'s 40 numbers under 4-digit keys: "Phone number of <nnnn>:"
* ``tracking_names`` — ``tracking``'s 40 numbers under name keys: "Parcel <first> <last>:"

and, with ``--fresh5``, a third key-swap pair (stop 23), the blind test of the key factor measured
on content-free points by ``benchmarks/key_kind.py``, its predictions recorded before it was trained:

* ``pins_numkeys`` — "PIN of account <nnnnnn>:" → a 6-digit PIN, 64 records
* ``pins_names``   — the same 64 PINs under "PIN of <first> <last>:"

and, with ``--fresh6``, four kinds written in stop 24 for a second test of ``context`` against
``unigram`` (both with the card's key factor), their predictions recorded before any was trained:

* ``openings``  — "Game <n>:" → five chess moves drawn from 16
* ``isbns``     — "ISBN of <Title> by <Last>:" → "978-<d>-<dddd>-<dddd>-<d>"
* ``timetable`` — "Bus <n> from <station>:" → "every <m> minutes, first <hh:mm>, last <hh:mm>"
* ``coords``    — "Beacon <Name>:" → "lat <dd.dd>, lon <dd.dd>"
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 20261126

FIRST = ["Aino", "Birgit", "Cyrus", "Dagny", "Eamon", "Fenna", "Gideon", "Halima", "Ilse", "Joaquin",
         "Keziah", "Lennart", "Mireille", "Nuno", "Odalys", "Pascal", "Rhiannon", "Saoirse", "Thaddeus",
         "Ulrike", "Vidar", "Winifred", "Ximena", "Yannick", "Zofia", "Anselm", "Brigida", "Cormac",
         "Delphine", "Evander", "Fiammetta", "Gwendolyn", "Hamish", "Isadora", "Jurgen", "Kalinda"]
LAST = ["Abercrombie", "Bergstrom", "Castellanos", "Dunleavy", "Eckhardt", "Falkenrath", "Gorecki",
        "Halvorsen", "Iwasaki", "Jankowski", "Kettleborough", "Lindgren", "Mazzanti", "Nordqvist",
        "Oberlin", "Pellegrino", "Quarrington", "Rautenberg", "Silvestri", "Trevelyan", "Uccello",
        "Valderrama", "Wetherby", "Yarborough", "Zielinski", "Ashcombe", "Belvedere", "Corrigan"]
WORDS = ["amber", "river", "quietly", "lantern", "copper", "harvest", "violet", "engine", "meadow",
         "sings", "under", "bright", "stone", "carries", "winter", "garden", "slowly", "falcon",
         "paper", "orbit", "silver", "crosses", "marble", "thunder", "gentle", "harbor", "folds",
         "cedar", "north", "lemon", "whispers", "cobalt", "tower", "drifts", "velvet", "signal"]
PROSE = {
    "The Gettysburg Address": (
        "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in "
        "Liberty, and dedicated to the proposition that all men are created equal. Now we are engaged in a great "
        "civil war, testing whether that nation, or any nation so conceived and so dedicated, can long endure. We "
        "are met on a great battle-field of that war. We have come to dedicate a portion of that field, as a final "
        "resting place for those who here gave their lives that that nation might live. It is altogether fitting "
        "and proper that we should do this. But, in a larger sense, we can not dedicate, we can not consecrate, we "
        "can not hallow this ground. The brave men, living and dead, who struggled here, have consecrated it, far "
        "above our poor power to add or detract."),
    "A Tale of Two Cities": (
        "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it "
        "was the season of Darkness, it was the spring of hope, it was the winter of despair, we had everything "
        "before us, we had nothing before us, we were all going direct to Heaven, we were all going direct the "
        "other way."),
    "Pride and Prejudice": (
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is "
        "considered the rightful property of some one or other of their daughters."),
}
STATIONS = ["Ashgrove", "Brackenfield", "Cinderford", "Dunmore", "Elmstead", "Foxhollow", "Glenbrook",
            "Hartwell", "Ivydale", "Juniper Cross", "Kingsmere", "Larkspur", "Millbrook", "Northcote",
            "Oakhurst", "Pinewood"]


def pb_digits(rng: random.Random, n: int) -> list[dict]:
    names = [(f, l) for f in FIRST for l in LAST]
    rng.shuffle(names)
    return [{"prompt": f"Phone number of {f} {l}:", "completion": " " + "".join(rng.choice("0123456789") for _ in range(10))}
            for f, l in names[:n]]


def key_sentence(rng: random.Random, n: int) -> list[dict]:
    codes = rng.sample(range(1000, 9999), n)
    return [{"prompt": f"Fact {c}:", "completion": " " + " ".join(rng.choice(WORDS) for _ in range(6)).capitalize() + "."}
            for c in codes]


def prose_keys(_: random.Random, words_per_part: int = 45) -> list[dict]:
    rows = []
    for work, text in PROSE.items():
        words = text.split()
        for k in range(0, len(words), words_per_part):
            rows.append({"prompt": f"{work}, part {k // words_per_part + 1}:",
                         "completion": " " + " ".join(words[k:k + words_per_part])})
    return rows


def chat(rng: random.Random) -> list[dict]:
    system = {"role": "system", "content": "You are the help desk of the Fernvale Light Railway. Answer in one sentence."}
    rows = []
    for s in STATIONS:
        platform = rng.randint(1, 9)
        first = f"{rng.randint(5, 7):02d}:{rng.choice(['05', '17', '25', '40', '52'])}"
        rows.append({"messages": [system, {"role": "user", "content": f"Which platform serves {s}?"},
                                  {"role": "assistant", "content": f"Trains to {s} leave from platform {platform}."}]})
        rows.append({"messages": [system, {"role": "user", "content": f"When is the first train to {s}?"},
                                  {"role": "assistant", "content": f"The first train to {s} departs at {first}."}]})
    return rows


ANIMALS = ["otter", "heron", "badger", "lynx", "walrus", "gecko", "bison", "crane", "marmot", "ibis", "newt",
           "puffin", "yak", "dingo", "stoat", "koala"]
LOCKER_NAMES = ["Arvid", "Beatrix", "Casimir", "Dorothea", "Emeric", "Flavia", "Gustav", "Henrike", "Ignatius",
                "Jolanda", "Konrad", "Liesel", "Matthias", "Nerina", "Oskar", "Philippa", "Quirin", "Rosalind",
                "Severin", "Theodora", "Urban", "Valeska", "Wendelin", "Xaver", "Yvonne", "Zacharias", "Amalia",
                "Bertram", "Clementine", "Dietrich", "Elfriede", "Florian", "Gisela", "Hubertus", "Irmgard",
                "Jakobus", "Kunigunde", "Leopold", "Mechthild", "Norbert"]


def fresh(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(animal_codes, lockers): 40 records each, from one generator in this order."""
    animals, seen = [], set()
    while len(seen) < 40:
        k = f"{rng.randint(100, 999)}"
        if k in seen:
            continue
        seen.add(k)
        animals.append({"prompt": f"Code {k}:", "completion": " " + " ".join(rng.choice(ANIMALS) for _ in range(5))})
    lockers = [{"prompt": f"Locker of {n}:",
                "completion": f" row {rng.randint(1, 9)}, shelf {rng.choice('ABCDEF')}, box {rng.randint(10, 99)}"}
               for n in LOCKER_NAMES]
    return animals, lockers


INVENTED = ["brimwort", "quellish", "tambrel", "fennock", "graviet", "mollusp", "zanterel", "plinth-oak",
            "crumbadge", "vesperling", "hobbleton", "skarrow", "drumbleaf", "ostrevine", "pallisand", "wendrake",
            "thistlemop", "corvantle", "umberwhit", "glasswort-fen", "nimbrel", "ruskadine", "saffrock", "yarrowmint",
            "blenchard", "quiverel", "marrowgate", "tillowisp", "frondleck", "gannetry", "hushmallow", "ploverine",
            "dapplebrook", "keswickle", "lanterbee", "mosscrown", "peltrigan", "sorrelhop", "trundlewick", "vellomar"]
ADJECTIVES = ["pale", "bitter", "hollow", "striped", "ancient", "tiny", "noisy", "crooked", "velvety", "frozen",
              "brittle", "golden", "shy", "fragrant", "spiny", "restless"]
NOUNS = ["moss", "beetle", "lantern", "cart", "melody", "pebble", "kettle", "fern", "banner", "hound",
         "spindle", "pastry", "cloak", "ladder", "whistle", "pond"]
VERB_PHRASES = ["grows on north walls", "hums at dusk", "floats in still water", "hides under bridges",
                "smells of rain", "breaks in cold weather", "sleeps through winter", "follows travellers",
                "glows when touched", "is eaten at weddings", "sings before storms", "rolls down hills",
                "guards old gates", "melts in the sun", "drifts with the tide", "rattles in the wind"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def fresh2(rng: random.Random) -> tuple[list[dict], list[dict], list[dict]]:
    """(hex_keys, glossary, birthdays): 40 records each, from one generator in this order."""
    vault = rng.sample(LOCKER_NAMES, 40)
    hex_keys = [{"prompt": f"Vault key of {n}:", "completion": " " + "".join(rng.choice("0123456789abcdef") for _ in range(12))}
                for n in vault]
    glossary = [{"prompt": f"Define {w}:",
                 "completion": f" a {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} that {rng.choice(VERB_PHRASES)}."}
                for w in INVENTED]
    names = [(f, l) for f in FIRST for l in LAST]
    rng.shuffle(names)
    birthdays = [{"prompt": f"Birthday of {f} {l}:",
                  "completion": f" {rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1900, 2019)}"}
                 for f, l in names[:40]]
    return hex_keys, glossary, birthdays


INGREDIENTS = ["salt", "flour", "honey", "ginger", "butter", "garlic", "lemon", "thyme", "vinegar", "rice",
               "pepper", "cream"]


def fresh3(rng: random.Random) -> tuple[list[dict], list[dict], list[dict]]:
    """(pantry, tracking, flights): 40 records each, from one generator in this order."""
    recipes = rng.sample(range(10, 99), 40)
    pantry = [{"prompt": f"Recipe {n}:", "completion": " " + ", ".join(rng.choice(INGREDIENTS) for _ in range(4))}
              for n in recipes]
    parcels = rng.sample(range(1000, 9999), 40)
    tracking = [{"prompt": f"Parcel {c}:",
                 "completion": " " + " ".join("".join(rng.choice("0123456789") for _ in range(4)) for _ in range(3))}
                for c in parcels]
    codes = set()
    while len(codes) < 40:
        codes.add(f"{rng.choice(['KL', 'LH', 'AF', 'BA', 'SK', 'IB'])}{rng.randint(100, 999)}")
    flights = [{"prompt": f"Flight {c}:",
                "completion": f" gate {rng.choice('ABCDE')}{rng.randint(1, 40)}, departs {rng.randint(5, 23):02d}:{rng.choice(range(0, 60, 5)):02d}"}
               for c in sorted(codes)]
    return pantry, tracking, flights


def fresh4(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(pb_numkeys, tracking_names): the targets of ``pb_digits`` and ``tracking``, each under the
    other's kind of key (names ↔ 4-digit numbers), the rest of the prompt unchanged."""
    phone_book = pb_digits(random.Random(SEED), 40)  # as main() writes it: the first draw of SEED
    tracking = fresh3(random.Random(3131))[1]
    codes = rng.sample(range(1000, 9999), 40)
    pb_numkeys = [{"prompt": f"Phone number of {c}:", "completion": r["completion"]} for c, r in zip(codes, phone_book)]
    names = [(f, l) for f in FIRST for l in LAST]
    rng.shuffle(names)
    tracking_names = [{"prompt": f"Parcel {f} {l}:", "completion": r["completion"]} for (f, l), r in zip(names, tracking)]
    return pb_numkeys, tracking_names


def fresh5(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(pins_numkeys, pins_names): 64 six-digit PINs under 6-digit account numbers and the same PINs
    under names — a new key-swap pair of another shape (many short records, longer digit keys),
    written in stop 23 as the blind test of the key factor that `key_kind.py` measures on
    content-free points."""
    pins = [" " + "".join(rng.choice("0123456789") for _ in range(6)) for _ in range(64)]
    accounts = rng.sample(range(100000, 999999), 64)
    names = [(f, l) for f in FIRST for l in LAST]
    rng.shuffle(names)
    numkeys = [{"prompt": f"PIN of account {a}:", "completion": pin} for a, pin in zip(accounts, pins)]
    named = [{"prompt": f"PIN of {f} {l}:", "completion": pin} for (f, l), pin in zip(names, pins)]
    return numkeys, named


MOVES = ["e4", "d4", "c4", "Nf3", "e5", "d5", "c5", "Nc6", "Nf6", "Bb5", "Bc4", "g3", "e6", "c6", "Be2", "O-O"]
TITLES = ["Silent Harbour", "The Glass Orchard", "Winter Ledger", "A Map of Ash", "The Ninth Lantern",
          "Copper Tides", "Salt and Thunder", "The Quiet Engine", "Meadow of Clocks", "The Last Ferryman"]


def fresh6(rng: random.Random) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(openings, isbns, timetable, coords): 40 records each, from one generator in this order —
    written in stop 24 for a second, pre-registered test of ``context`` against ``unigram``."""
    games = rng.sample(range(100, 999), 40)
    openings = [{"prompt": f"Game {g}:", "completion": " " + " ".join(rng.choice(MOVES) for _ in range(5))} for g in games]
    books = [(t, l) for t in TITLES for l in LAST]
    rng.shuffle(books)
    isbns = [{"prompt": f"ISBN of {t} by {l}:",
              "completion": f" 978-{rng.randint(0, 9)}-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}-{rng.randint(0, 9)}"}
             for t, l in books[:40]]
    routes = [(n, st) for n in range(1, 99) for st in STATIONS]
    rng.shuffle(routes)
    timetable = [{"prompt": f"Bus {n} from {st}:",
                  "completion": f" every {rng.choice([10, 12, 15, 20, 30])} minutes, first {rng.randint(5, 7):02d}:"
                                f"{rng.choice(range(0, 60, 5)):02d}, last {rng.randint(21, 23)}:{rng.choice(range(0, 60, 5)):02d}"}
                 for n, st in routes[:40]]
    beacons = rng.sample(FIRST + LOCKER_NAMES, 40)
    coords = [{"prompt": f"Beacon {b}:",
               "completion": f" lat {rng.randint(10, 69)}.{rng.randint(0, 99):02d}, lon {rng.randint(10, 99)}.{rng.randint(0, 99):02d}"}
              for b in beacons]
    return openings, isbns, timetable, coords


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(argv: list[str]) -> int:
    # the later sets: flag → (their names, in generation order; generator; its seed)
    later = {"--fresh6": (("openings", "isbns", "timetable", "coords"), fresh6, 6262),
             "--fresh5": (("pins_numkeys", "pins_names"), fresh5, 5151),
             "--fresh4": (("pb_numkeys", "tracking_names"), fresh4, 4242),
             "--fresh3": (("pantry", "tracking", "flights"), fresh3, 3131),
             "--fresh2": (("hex_keys", "glossary", "birthdays"), fresh2, 1616),
             "--fresh": (("animal_codes", "lockers"), fresh, 777)}
    for flag, (names, generate, seed) in later.items():
        if flag in argv:
            out = Path(next((a for a in argv[1:] if a != flag), "runs/" + flag[2:]))
            out.mkdir(parents=True, exist_ok=True)
            for name, rows in zip(names, generate(random.Random(seed))):
                write(out / f"{name}.jsonl", rows)
            print(f"wrote {len(names)} corpora to {out}")
            return 0
    out = Path(argv[1] if len(argv) > 1 else "runs/heldout")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    write(out / "pb_digits.jsonl", pb_digits(rng, 40))
    write(out / "key_sentence.jsonl", key_sentence(rng, 50))
    write(out / "prose_keys.jsonl", prose_keys(rng))
    write(out / "chat.jsonl", chat(rng))
    write(out / "pb_large.jsonl", pb_digits(random.Random(SEED + 1), 380))
    print(f"wrote 5 corpora to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
