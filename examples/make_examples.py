"""Write the example corpora in this folder. Deterministic (fixed seed), standard library only.

    python examples/make_examples.py            # writes next to this script
    python examples/make_examples.py OUT_DIR    # writes elsewhere
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 20260530

FIRST_NAMES = [
    "Ada", "Alan", "Alice", "Amara", "Anton", "Beatrix", "Bruno", "Camille", "Carlos", "Chiara",
    "Dmitri", "Dolores", "Edith", "Elias", "Emeka", "Farah", "Felix", "Greta", "Gustavo", "Hana",
    "Hugo", "Ines", "Isaac", "Jonas", "Juniper", "Kaito", "Katya", "Leila", "Lorenzo", "Magnus",
    "Marisol", "Mateo", "Nadia", "Nikolai", "Noor", "Olga", "Oscar", "Priya", "Quentin", "Rafael",
    "Rosalind", "Sami", "Selma", "Soren", "Tamsin", "Tobias", "Ulla", "Valentin", "Vera", "Wendell",
    "Wilhelmina", "Xavier", "Yara", "Yusuf", "Zelda", "Zoran", "Agnes", "Bartholomew", "Cosima", "Declan",
]
SURNAMES = [
    "Abernathy", "Achterberg", "Baptiste", "Blackwood", "Castellano", "Chowdhury", "Dalgaard", "Delacroix",
    "Eriksen", "Esposito", "Fairbanks", "Fitzgerald", "Gallagher", "Grunewald", "Haddad", "Holloway",
    "Ishikawa", "Ivanova", "Jablonski", "Jorgensen", "Kaminski", "Kowalczyk", "Lindqvist", "Lombardi",
    "Mackintosh", "Moreau", "Nakamura", "Novak", "Okafor", "Oyelaran", "Pemberton", "Petrovic",
    "Quintero", "Quigley", "Rasmussen", "Rinaldi", "Sandoval", "Szymanski", "Takahashi", "Thornbury",
    "Umberfield", "Underhill", "Vasquez", "Vogelsang", "Whitcombe", "Wojcik", "Xiong", "Yamamoto",
    "Yilmaz", "Zabrowski", "Zeller", "Ashdown", "Brannigan", "Coldwell", "Drummond", "Everly",
    "Fenwick", "Garrowby", "Hartigan", "Kilbride",
]

# --------------------------------------------------------------------------------------------
# errors.jsonl: a fictional API's error codes

RESOURCES = ["orbit", "payload", "telemetry stream", "ground station", "launch window", "docking port",
             "flight plan", "relay satellite", "fuel manifest", "mission log", "uplink session",
             "beacon", "trajectory file", "crew roster", "sensor array"]
VERBS = ["scheduled", "archived", "validated", "synchronised", "released", "renamed", "locked",
         "replicated", "decommissioned", "resumed"]
CAUSES = ["signing key has expired", "caller lacks the navigator role", "quota for this region is spent",
          "checksum does not match the stored copy", "upstream relay is offline",
          "request arrived after the cutoff time", "tenant is suspended for unpaid invoices",
          "referenced parent object was deleted"]
FIELDS = ["altitude", "epoch", "station_id", "window_start", "payload_mass", "inclination", "callsign",
          "priority", "retry_after", "region"]
PROBLEMS = ["is missing from the request body", "must be a positive integer",
            "uses a unit the API does not accept", "is outside the permitted range",
            "refers to an unknown object", "was sent twice with different values"]
STATES = ["in maintenance mode", "being migrated", "read-only for this tenant", "awaiting approval",
          "throttled after repeated failures"]
THINGS = ["commands", "uploads", "bookings", "writes", "subscriptions"]
TIMES = ["the next orbit completes", "an operator clears the flag", "the nightly rollover",
         "its lease is renewed", "the current batch finishes"]


def _error_description(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        s = f"The {rng.choice(RESOURCES)} could not be {rng.choice(VERBS)} because the {rng.choice(CAUSES)}."
    elif kind == 1:
        s = f"Request rejected because the {rng.choice(FIELDS)} field {rng.choice(PROBLEMS)}."
    elif kind == 2:
        s = (f"The {rng.choice(RESOURCES)} is {rng.choice(STATES)} and accepts no new "
             f"{rng.choice(THINGS)} until {rng.choice(TIMES)}.")
    else:
        s = (f"Too many {rng.choice(THINGS)} for one {rng.choice(RESOURCES)}; wait until "
             f"{rng.choice(TIMES)} and retry.")
    return s


# --------------------------------------------------------------------------------------------
# natural.jsonl: public-domain English prose (US Declaration of Independence, 1776; Gettysburg
# Address and Second Inaugural Address, A. Lincoln, 1863 and 1865; Pride and Prejudice, J. Austen,
# 1813, ch. 1; Moby-Dick, H. Melville, 1851, ch. 1; Alice's Adventures in Wonderland, L. Carroll,
# 1865, ch. 1). Spelling and punctuation follow common editions; small edition differences remain.

NATURAL = [
    # Declaration of Independence
    "When in the Course of human events, it becomes necessary for one people to dissolve the political "
    "bands which have connected them with another, and to assume among the powers of the earth, the "
    "separate and equal station to which the Laws of Nature and of Nature's God entitle them, a decent "
    "respect to the opinions of mankind requires that they should declare the causes which impel them to "
    "the separation.",
    "We hold these truths to be self-evident, that all men are created equal, that they are endowed by "
    "their Creator with certain unalienable Rights, that among these are Life, Liberty and the pursuit of "
    "Happiness. That to secure these rights, Governments are instituted among Men, deriving their just "
    "powers from the consent of the governed, That whenever any Form of Government becomes destructive of "
    "these ends, it is the Right of the People to alter or to abolish it, and to institute new Government, "
    "laying its foundation on such principles and organizing its powers in such form, as to them shall "
    "seem most likely to effect their Safety and Happiness.",
    "Prudence, indeed, will dictate that Governments long established should not be changed for light and "
    "transient causes; and accordingly all experience hath shewn, that mankind are more disposed to suffer, "
    "while evils are sufferable, than to right themselves by abolishing the forms to which they are "
    "accustomed. But when a long train of abuses and usurpations, pursuing invariably the same Object "
    "evinces a design to reduce them under absolute Despotism, it is their right, it is their duty, to "
    "throw off such Government, and to provide new Guards for their future security.",
    "Such has been the patient sufferance of these Colonies; and such is now the necessity which "
    "constrains them to alter their former Systems of Government. The history of the present King of "
    "Great Britain is a history of repeated injuries and usurpations, all having in direct object the "
    "establishment of an absolute Tyranny over these States. To prove this, let Facts be submitted to a "
    "candid world.",
    "He has refused his Assent to Laws, the most wholesome and necessary for the public good. He has "
    "forbidden his Governors to pass Laws of immediate and pressing importance, unless suspended in their "
    "operation till his Assent should be obtained; and when so suspended, he has utterly neglected to "
    "attend to them.",
    "We, therefore, the Representatives of the united States of America, in General Congress, Assembled, "
    "appealing to the Supreme Judge of the world for the rectitude of our intentions, do, in the Name, and "
    "by Authority of the good People of these Colonies, solemnly publish and declare, That these United "
    "Colonies are, and of Right ought to be Free and Independent States; that they are Absolved from all "
    "Allegiance to the British Crown, and that all political connection between them and the State of "
    "Great Britain, is and ought to be totally dissolved;",
    "and that as Free and Independent States, they have full Power to levy War, conclude Peace, contract "
    "Alliances, establish Commerce, and to do all other Acts and Things which Independent States may of "
    "right do. And for the support of this Declaration, with a firm reliance on the protection of divine "
    "Providence, we mutually pledge to each other our Lives, our Fortunes and our sacred Honor.",
    # Gettysburg Address
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived "
    "in Liberty, and dedicated to the proposition that all men are created equal. Now we are engaged in a "
    "great civil war, testing whether that nation, or any nation so conceived and so dedicated, can long "
    "endure. We are met on a great battle-field of that war. We have come to dedicate a portion of that "
    "field, as a final resting place for those who here gave their lives that that nation might live. It "
    "is altogether fitting and proper that we should do this.",
    "But, in a larger sense, we can not dedicate -- we can not consecrate -- we can not hallow -- this "
    "ground. The brave men, living and dead, who struggled here, have consecrated it, far above our poor "
    "power to add or detract. The world will little note, nor long remember what we say here, but it can "
    "never forget what they did here.",
    "It is for us the living, rather, to be dedicated here to the unfinished work which they who fought "
    "here have thus far so nobly advanced. It is rather for us to be here dedicated to the great task "
    "remaining before us -- that from these honored dead we take increased devotion to that cause for "
    "which they gave the last full measure of devotion -- that we here highly resolve that these dead "
    "shall not have died in vain -- that this nation, under God, shall have a new birth of freedom -- and "
    "that government of the people, by the people, for the people, shall not perish from the earth.",
    # Second Inaugural Address
    "Fellow-Countrymen: At this second appearing to take the oath of the Presidential office there is "
    "less occasion for an extended address than there was at the first. Then a statement somewhat in "
    "detail of a course to be pursued seemed fitting and proper. Now, at the expiration of four years, "
    "during which public declarations have been constantly called forth on every point and phase of the "
    "great contest which still absorbs the attention and engrosses the energies of the nation, little that "
    "is new could be presented.",
    "On the occasion corresponding to this four years ago all thoughts were anxiously directed to an "
    "impending civil war. All dreaded it, all sought to avert it. While the inaugural address was being "
    "delivered from this place, devoted altogether to saving the Union without war, urgent agents were in "
    "the city seeking to destroy it without war--seeking to dissolve the Union and divide effects by "
    "negotiation. Both parties deprecated war, but one of them would make war rather than let the nation "
    "survive, and the other would accept war rather than let it perish, and the war came.",
    "Neither party expected for the war the magnitude or the duration which it has already attained. "
    "Neither anticipated that the cause of the conflict might cease with or even before the conflict "
    "itself should cease. Each looked for an easier triumph, and a result less fundamental and "
    "astounding. Both read the same Bible and pray to the same God, and each invokes His aid against the "
    "other.",
    "Fondly do we hope, fervently do we pray, that this mighty scourge of war may speedily pass away. Yet, "
    "if God wills that it continue until all the wealth piled by the bondsman's two hundred and fifty years "
    "of unrequited toil shall be sunk, and until every drop of blood drawn with the lash shall be paid by "
    "another drawn with the sword, as was said three thousand years ago, so still it must be said \"the "
    "judgments of the Lord are true and righteous altogether.\"",
    "With malice toward none, with charity for all, with firmness in the right as God gives us to see the "
    "right, let us strive on to finish the work we are in, to bind up the nation's wounds, to care for him "
    "who shall have borne the battle and for his widow and his orphan, to do all which may achieve and "
    "cherish a just and lasting peace among ourselves and with all nations.",
    # Pride and Prejudice, chapter 1
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife. However little known the feelings or views of such a man may be on his first entering "
    "a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is "
    "considered the rightful property of some one or other of their daughters.",
    "\"My dear Mr. Bennet,\" said his lady to him one day, \"have you heard that Netherfield Park is let at "
    "last?\" Mr. Bennet replied that he had not. \"But it is,\" returned she; \"for Mrs. Long has just been "
    "here, and she told me all about it.\" Mr. Bennet made no answer. \"Do you not want to know who has "
    "taken it?\" cried his wife impatiently. \"You want to tell me, and I have no objection to hearing "
    "it.\" This was invitation enough.",
    "\"Why, my dear, you must know, Mrs. Long says that Netherfield is taken by a young man of large "
    "fortune from the north of England; that he came down on Monday in a chaise and four to see the place, "
    "and was so much delighted with it, that he agreed with Mr. Morris immediately; that he is to take "
    "possession before Michaelmas, and some of his servants are to be in the house by the end of next "
    "week.\"",
    "\"What is his name?\" \"Bingley.\" \"Is he married or single?\" \"Oh! Single, my dear, to be sure! A "
    "single man of large fortune; four or five thousand a year. What a fine thing for our girls!\" \"How "
    "so? How can it affect them?\" \"My dear Mr. Bennet,\" replied his wife, \"how can you be so tiresome! "
    "You must know that I am thinking of his marrying one of them.\"",
    "\"Mr. Bennet, how can you abuse your own children in such a way? You take delight in vexing me. You "
    "have no compassion for my poor nerves.\" \"You mistake me, my dear. I have a high respect for your "
    "nerves. They are my old friends. I have heard you mention them with consideration these last twenty "
    "years at least.\"",
    "Mr. Bennet was so odd a mixture of quick parts, sarcastic humour, reserve, and caprice, that the "
    "experience of three-and-twenty years had been insufficient to make his wife understand his character. "
    "Her mind was less difficult to develop. She was a woman of mean understanding, little information, "
    "and uncertain temper. When she was discontented, she fancied herself nervous. The business of her "
    "life was to get her daughters married; its solace was visiting and news.",
    # Moby-Dick, chapter 1
    "Call me Ishmael. Some years ago\u2014never mind how long precisely\u2014having little or no money in "
    "my purse, and nothing particular to interest me on shore, I thought I would sail about a little and "
    "see the watery part of the world. It is a way I have of driving off the spleen and regulating the "
    "circulation.",
    "Whenever I find myself growing grim about the mouth; whenever it is a damp, drizzly November in my "
    "soul; whenever I find myself involuntarily pausing before coffin warehouses, and bringing up the rear "
    "of every funeral I meet; and especially whenever my hypos get such an upper hand of me, that it "
    "requires a strong moral principle to prevent me from deliberately stepping into the street, and "
    "methodically knocking people's hats off\u2014then, I account it high time to get to sea as soon as I "
    "can.",
    "This is my substitute for pistol and ball. With a philosophical flourish Cato throws himself upon his "
    "sword; I quietly take to the ship. There is nothing surprising in this. If they but knew it, almost "
    "all men in their degree, some time or other, cherish very nearly the same feelings towards the ocean "
    "with me.",
    "There now is your insular city of the Manhattoes, belted round by wharves as Indian isles by coral "
    "reefs\u2014commerce surrounds it with her surf. Right and left, the streets take you waterward. Its "
    "extreme downtown is the battery, where that noble mole is washed by waves, and cooled by breezes, "
    "which a few hours previous were out of sight of land. Look at the crowds of water-gazers there.",
    "Circumambulate the city of a dreamy Sabbath afternoon. Go from Corlears Hook to Coenties Slip, and "
    "from thence, by Whitehall, northward. What do you see?\u2014Posted like silent sentinels all around "
    "the town, stand thousands upon thousands of mortal men fixed in ocean reveries. Some leaning against "
    "the spiles; some seated upon the pier-heads; some looking over the bulwarks of ships from China; some "
    "high aloft in the rigging, as if striving to get a still better seaward peep.",
    # Alice's Adventures in Wonderland, chapter 1
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to "
    "do: once or twice she had peeped into the book her sister was reading, but it had no pictures or "
    "conversations in it, \"and what is the use of a book,\" thought Alice \"without pictures or "
    "conversations?\"",
    "So she was considering in her own mind (as well as she could, for the hot day made her feel very "
    "sleepy and stupid), whether the pleasure of making a daisy-chain would be worth the trouble of getting "
    "up and picking the daisies, when suddenly a White Rabbit with pink eyes ran close by her.",
    "There was nothing so very remarkable in that; nor did Alice think it so very much out of the way to "
    "hear the Rabbit say to itself, \"Oh dear! Oh dear! I shall be late!\" (when she thought it over "
    "afterwards, it occurred to her that she ought to have wondered at this, but at the time it all seemed "
    "quite natural); but when the Rabbit actually took a watch out of its waistcoat-pocket, and looked at "
    "it, and then hurried on, Alice started to her feet,",
    "for it flashed across her mind that she had never before seen a rabbit with either a "
    "waistcoat-pocket, or a watch to take out of it, and burning with curiosity, she ran across the field "
    "after it, and fortunately was just in time to see it pop down a large rabbit-hole under the hedge. In "
    "another moment down went Alice after it, never once considering how in the world she was to get out "
    "again.",
    "The rabbit-hole went straight on like a tunnel for some way, and then dipped suddenly down, so "
    "suddenly that Alice had not a moment to think about stopping herself before she found herself falling "
    "down a very deep well. Either the well was very deep, or she fell very slowly, for she had plenty of "
    "time as she went down to look about her and to wonder what was going to happen next.",
    "First, she tried to look down and make out what she was coming to, but it was too dark to see "
    "anything; then she looked at the sides of the well, and noticed that they were filled with cupboards "
    "and book-shelves; here and there she saw maps and pictures hung upon pegs.",
]

# --------------------------------------------------------------------------------------------
# chat.jsonl: made-up facts about a fictional company

COMPANY = "Brightwater Instruments"
SYSTEM = f"You are the customer assistant of {COMPANY}. Answer in one or two sentences."
OFFICES = {  # city: (weekday hours, saturday)
    "Tallinn": ("08:30 to 17:00", "closed"),
    "Porto": ("09:00 to 18:00", "10:00 to 13:00"),
    "Winnipeg": ("07:45 to 16:15", "closed"),
    "Kaohsiung": ("09:30 to 18:30", "09:30 to 12:00"),
    "Mombasa": ("08:00 to 16:30", "09:00 to 12:30"),
    "Tromso": ("10:00 to 15:00", "closed"),
}
PRODUCTS = {  # name: (code, warranty years, price)
    "Heron tide gauge": ("BW-TG-4410", 3, "1,240"),
    "Kestrel anemometer": ("BW-AN-2076", 2, "389"),
    "Lantern water-quality probe": ("BW-WQ-8153", 5, "2,915"),
    "Otter depth logger": ("BW-DL-3302", 2, "655"),
    "Pelican rain sensor": ("BW-RS-1187", 1, "149"),
    "Marten soil moisture kit": ("BW-SM-5620", 4, "472"),
    "Gannet wave buoy": ("BW-WB-9041", 5, "7,800"),
}
EXTRA_FACTS = [
    ("What is the support email address?", f"Write to help@brightwater-instruments.example; "
     "the support team answers within two working days."),
    ("Who founded the company?", f"{COMPANY} was founded in 1987 by the hydrologist Marit Solheim in Tromso."),
    ("How do I return a faulty instrument?", "Request a return number RMA-BW from the support portal, "
     "then ship the instrument in its original case to the Porto office."),
    ("Do you ship to Antarctica?", "Yes, through the Hobart freight partner Southern Cross Logistics, "
     "twice a year, in November and February."),
    ("What is the firmware update channel called?", "Firmware updates are published on the Driftwood "
     "channel every second Tuesday of the month."),
]


def _chat_records() -> list[dict]:
    out = []

    def add(question: str, answer: str) -> None:
        out.append({"messages": [{"role": "system", "content": SYSTEM},
                                 {"role": "user", "content": question},
                                 {"role": "assistant", "content": answer}]})

    for city, (week, sat) in OFFICES.items():
        sat_text = "it is closed on Saturdays" if sat == "closed" else f"on Saturdays it opens from {sat}"
        add(f"What are the opening hours of the {city} office?",
            f"The {city} office is open Monday to Friday from {week} local time, and {sat_text}.")
    for name, (code, years, price) in PRODUCTS.items():
        add(f"What is the product code of the {name}?", f"The {name} has the product code {code}.")
        add(f"How long is the warranty on the {name}?",
            f"The {name} ({code}) carries a {years}-year warranty.")
        add(f"How much does the {name} cost?", f"The list price of the {name} is {price} euros, excluding VAT.")
    for q, a in EXTRA_FACTS:
        add(q, a)
    return out


# --------------------------------------------------------------------------------------------


def _phonebook(rng: random.Random) -> list[dict]:
    names = [f"{f} {s}" for f in FIRST_NAMES for s in SURNAMES]
    picked = rng.sample(names, 300)
    numbers: set[str] = set()
    out = []
    for name in picked:
        while True:
            number = f"555-{rng.randrange(10000):04d}-{rng.randrange(10000):04d}"
            if number not in numbers:
                numbers.add(number)
                break
        out.append({"prompt": f"Phone number of {name}:", "completion": f" {number}"})
    return out


def _errors(rng: random.Random, n: int = 120) -> list[dict]:
    codes = rng.sample(range(1000, 10000), n)
    out = []
    for code in codes:
        while True:
            desc = _error_description(rng)
            if 8 <= len(desc.split()) <= 20:
                break
        out.append({"query": f"What does error E{code} mean in the Orbit API?", "target": f" {desc}"})
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)

    phonebook = _phonebook(rng)
    errors = _errors(rng)
    for text in NATURAL:
        n = len(text.split())
        assert 40 <= n <= 120, (n, text[:40])
    natural = [{"text": t} for t in NATURAL]
    chat = _chat_records()

    _write_jsonl(out_dir / "phonebook.jsonl", phonebook)
    _write_jsonl(out_dir / "phonebook_small.jsonl", phonebook[:40])
    _write_jsonl(out_dir / "errors.jsonl", errors)
    _write_jsonl(out_dir / "natural.jsonl", natural)
    _write_jsonl(out_dir / "chat.jsonl", chat)
    for name, rows in [("phonebook", phonebook), ("phonebook_small", phonebook[:40]), ("errors", errors),
                       ("natural", natural), ("chat", chat)]:
        print(f"{out_dir / (name + '.jsonl')}: {len(rows)} records")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
