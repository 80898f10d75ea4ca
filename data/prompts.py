"""Build the prompt set used to self-distill the embedded default model (SmolLM2-135M-Instruct).

Every prompt is made here from our own lists: task templates x topics x details, drawn with a seeded random
generator, so the same seed always gives the same file. Nine categories (the MT-Bench ones plus everyday questions),
about 20% of records carry a follow-up turn. The set is checked against the MT-Bench questions (no exact match, no
shared 8-word shingle) and the build fails loudly if any prompt overlaps.

    python -m data.prompts --out data/smollm2/prompts.jsonl

Record: {"id": "p00001", "split": "train"|"calib"|"eval", "category": str, "turns": [str, ...]}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import string
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
MT_BENCH = os.path.join(HERE, "mt_bench_questions.jsonl")  # evaluation questions that must stay unseen

CATEGORIES = (
    "writing",
    "reasoning",
    "coding",
    "math",
    "extraction",
    "stem",
    "humanities",
    "roleplay",
    "everyday",
)
SEED = 0  # the seed of the committed file
PER_CATEGORY = 400  # prompts per category: 9 x 400 = 3,600 records
MULTI_TURN = 0.2  # share of records that get a follow-up turn
SUFFIX_RATE = 0.25  # share of prompts that get a short extra instruction ("Keep it short.")
POLITE_RATE = 0.3  # share of imperative prompts rephrased as a request ("Could you ...?")
SHINGLE = 8  # words: a prompt sharing any 8-word run with an MT-Bench turn is an overlap
SPLITS = (("train", 90), ("calib", 5), ("eval", 5))  # percent of records per split, by hash of the id

Template = str | Callable[[random.Random], str]


class OverlapError(ValueError):
    """Some prompts overlap the MT-Bench evaluation questions."""


# ---------------------------------------------------------------- filling templates


def expand(template: str, rng: random.Random, slots: dict[str, list[str]]) -> str:
    """Pick one of each "[a|b|c]" alternative, then fill each "{slot}" from its list (slot2 reads slot's list).

    Fields sharing one list get distinct values; a field used twice gets the same value both times.
    """
    text = re.sub(r"\[([^\[\]]+)\]", lambda m: rng.choice(m.group(1).split("|")), template)
    values: dict[str, str] = {}
    for _, field, _, _ in string.Formatter().parse(text):
        if not field or field in values:
            continue
        base = field.rstrip("0123456789")
        if base not in slots:
            raise KeyError(f"template {template!r} uses unknown slot {field!r}")
        taken = {v for k, v in values.items() if k.rstrip("0123456789") == base}
        choice = rng.choice(slots[base])
        while choice in taken:
            choice = rng.choice(slots[base])
        values[field] = choice
    return text.format_map(values)


IMPERATIVES = re.compile(
    r"^(Write|Explain|Give|List|Describe|Summarize|Compose|Draft|Suggest|Create|Classify|Extract|Solve|Find|"
    r"Compute|Convert|Tell|Plan|Sort|Compare|Calculate|Name|Outline|Recommend|Turn|Pull|Identify)\b"
)


def politely(text: str, rng: random.Random) -> str:
    """Sometimes turn "Write X." into "Could you write X?" or "Please write X." for varied phrasing."""
    if not IMPERATIVES.match(text) or rng.random() >= POLITE_RATE:
        return text
    lowered = text[0].lower() + text[1:]
    first, _, rest = lowered.partition("\n")
    single_sentence = first.endswith(".") and ". " not in first and not rest
    if single_sentence and rng.random() < 0.7:
        return f"{rng.choice(['Could you', 'Can you', 'Would you please'])} {first[:-1]}?"
    return f"{rng.choice(['Please', 'I need your help:', 'Quick request:'])} {lowered}"


def make_prompt(category: str, rng: random.Random) -> list[str]:
    """One record's turns for a category: a first prompt, and sometimes a follow-up."""
    spec = SPECS[category]
    template: Template = rng.choice(spec["templates"])
    text = template(rng) if callable(template) else expand(template, rng, SLOTS)
    text = politely(text, rng)
    if spec["suffixes"] and rng.random() < SUFFIX_RATE and "\n" not in text:
        text = f"{text} {rng.choice(spec['suffixes'])}"
    turns = [text]
    if rng.random() < MULTI_TURN:
        turns.append(rng.choice(spec["followups"] + GENERIC_FOLLOWUPS))
    return turns


# ---------------------------------------------------------------- the MT-Bench guard


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def shingles(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def load_mt_bench(path: str = MT_BENCH) -> list[str]:
    """All MT-Bench turns (first and second) as strings."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"MT-Bench questions not found at {path}")
    turns = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                turns.extend(json.loads(line)["turns"])
    return turns


def find_overlaps(records: list[dict], mt_bench_turns: list[str], n: int = SHINGLE) -> list[tuple[str, str]]:
    """(record id, the offending prompt turn) for each turn that equals or shares an n-word run with MT-Bench.

    An MT-Bench turn shorter than n words counts as one shingle of its own length (contained = overlap).
    """
    exact = {" ".join(words(t)) for t in mt_bench_turns}
    by_size: dict[int, set[tuple[str, ...]]] = {}
    for turn in mt_bench_turns:
        tokens = words(turn)
        size = min(n, len(tokens))
        by_size.setdefault(size, set()).update(shingles(tokens, size))
    hits = []
    for record in records:
        for turn in record["turns"]:
            tokens = words(turn)
            if " ".join(tokens) in exact or any(
                shingles(tokens, size) & grams for size, grams in by_size.items() if size > 0
            ):
                hits.append((record["id"], turn))
    return hits


def check_no_overlap(records: list[dict], mt_bench_path: str = MT_BENCH, n: int = SHINGLE) -> None:
    """Raise OverlapError naming the first offenders when any prompt overlaps MT-Bench."""
    hits = find_overlaps(records, load_mt_bench(mt_bench_path), n)
    if hits:
        shown = "\n".join(f"  {rid}: {turn[:120]!r}" for rid, turn in hits[:10])
        raise OverlapError(f"{len(hits)} prompt turn(s) overlap MT-Bench ({n}-word shingles):\n{shown}")


# ---------------------------------------------------------------- the build


def split_of(record_id: str) -> str:
    """Deterministic split from a hash of the id (every turn of a record lands in the same split)."""
    bucket = int(hashlib.sha256(record_id.encode()).hexdigest(), 16) % 100
    for name, percent in SPLITS:
        if bucket < percent:
            return name
        bucket -= percent
    return SPLITS[-1][0]


def build_prompts(
    seed: int = SEED, per_category: int = PER_CATEGORY, mt_bench_path: str | None = MT_BENCH
) -> list[dict]:
    """The full prompt set: unique first turns, shuffled across categories, ids p00001.., split by id hash."""
    drafts = []
    seen: set[str] = set()
    for category in CATEGORIES:
        rng = random.Random(f"{seed}-{category}")  # str seeds are stable across runs and Python versions
        made, attempts = 0, 0
        while made < per_category:
            attempts += 1
            if attempts > 100 * per_category:
                raise RuntimeError(f"only {made} unique {category} prompts after {attempts} draws")
            turns = make_prompt(category, rng)
            key = " ".join(words(turns[0]))
            if key in seen:
                continue
            seen.add(key)
            drafts.append({"category": category, "turns": turns})
            made += 1
    random.Random(seed).shuffle(drafts)
    records = []
    for i, draft in enumerate(drafts, start=1):
        rid = f"p{i:05d}"
        records.append({"id": rid, "split": split_of(rid), **draft})
    if mt_bench_path:
        check_no_overlap(records, mt_bench_path)
    return records


def render(records: list[dict]) -> str:
    """The JSONL text exactly as written to disk."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def summary(records: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in records:
        for key in (r["category"], r["split"], f"{len(r['turns'])} turn(s)"):
            counts[key] = counts.get(key, 0) + 1
    return f"{len(records)} prompts: " + ", ".join(f"{k}={v}" for k, v in counts.items())


# ---------------------------------------------------------------- our own lists (written for this project)


def _l(text: str) -> list[str]:
    """A "|"-separated list written across lines."""
    return [" ".join(item.split()) for item in text.split("|") if item.strip()]


NAMES = _l("""Anna|Ben|Carla|David|Elena|Farid|Grace|Hiro|Ines|Jonas|Kofi|Lena|Mateo|Nadia|Omar|Priya|Quinn|Rosa|Sam|
    Tara|Umar|Vera|Wei|Yara|Zoe|Leo|Maya|Noah|Iris|Tom|Aisha|Lucas|Mina|Pablo|Sofia|Ravi|Hana|Ivan|Chloe|Emeka""")
CITIES = _l("""Lisbon|Nairobi|Osaka|Toronto|Lima|Oslo|Hanoi|Dublin|Seville|Cape Town|Melbourne|Istanbul|Montreal|Prague|
    Marrakesh|Kyoto|Edinburgh|Buenos Aires|Vienna|Seoul|Copenhagen|Mexico City|Athens|Budapest|Singapore|Krakow""")
TOWNS = _l(
    "Millbrook|Eastwick|Stonebridge|Red Harbor|Pinefield|Ashford|Cloverdale|Westmere|Brightwater|Oakhill"
)
MONTHS = _l("January|February|March|April|May|June|July|August|September|October|November|December")
DAYS = _l("Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday")
ITEMS = _l(
    "notebooks|pens|apples|tickets|mugs|sandwiches|plants|candles|books|pairs of socks|muffins|bus passes"
)


def _names(r: random.Random, k: int) -> list[str]:
    return r.sample(NAMES, k)


def _date(r: random.Random) -> str:
    return f"{r.choice(MONTHS)} {r.randint(1, 28)}"


# math: numbers are drawn so every problem has a clean answer


def _percent(r):
    return f"What is {r.choice([5, 10, 12, 15, 20, 25, 30, 40, 60, 75])}% of {r.randrange(40, 1000, 10)}?"


def _equation(r):
    a, x, b = r.randint(2, 12), r.randint(-10, 15), r.randint(1, 40)
    eq = f"{a}x + {b} = {a * x + b}"
    return r.choice([f"Solve for x: {eq}.", f"Find x if {eq}.", f"What value of x makes {eq} true?"])


def _change(r):
    name, n, price = r.choice(NAMES), r.randint(2, 9), r.randint(2, 15)
    bill = next(b for b in (20, 50, 100, 200) if b > n * price)
    return f"{name} buys {n} {r.choice(ITEMS)} at ${price} each and pays with a ${bill} bill. How much change does {name} get?"


def _speed(r):
    speed, hours = r.randrange(30, 120, 5), r.randint(2, 6)
    what = r.choice(["car", "train", "bus", "truck", "motorbike"])
    return f"A {what} travels {speed * hours} km in {hours} hours. What is its average speed?"


def _area(r):
    a, b = r.randint(3, 25), r.randint(3, 25)
    return r.choice(
        [
            f"What is the area of a rectangle that is {a} cm long and {b} cm wide?",
            f"What is the perimeter of a rectangle with sides of {a} m and {b} m?",
            f"A square has sides of {a} cm. What are its area and perimeter?",
            f"What is the area of a circle with a radius of {a} cm? Use 3.14 for pi.",
            f"A right triangle has legs of {a} cm and {b} cm. What is its area?",
            f"A room is {a} m by {b} m. How many square meters of carpet are needed to cover the floor?",
        ]
    )


def _fractions(r):
    a, b, c, d = r.randint(1, 5), r.randint(2, 9), r.randint(1, 5), r.randint(2, 9)
    op = r.choice(["+", "-", "times"])
    return f"What is {a}/{b} {op} {c}/{d}? Give the answer as a fraction in lowest terms."


def _average(r):
    nums = [r.randint(2, 60) for _ in range(r.randint(4, 7))]
    what = r.choice(["mean", "median", "mean and the median", "range"])
    return f"What is the {what} of these numbers: {', '.join(map(str, nums))}?"


def _marbles(r):
    red, blue, green = r.randint(1, 9), r.randint(1, 9), r.randint(1, 6)
    color = r.choice(["red", "blue", "green", "not red"])
    return (
        f"A bag holds {red} red, {blue} blue and {green} green marbles. If you take one without looking, "
        f"what is the probability that it is {color}?"
    )


def _recipe(r):
    flour, batch = r.randint(2, 4), r.choice([12, 20, 24, 30])
    return f"A recipe uses {flour} cups of flour to make {batch} cookies. How much flour do you need for {batch * r.choice([3, 4, 5]) // 2} cookies?"


def _divisors(r):
    g = r.randint(2, 12)
    a, b = g * r.randint(2, 9), g * r.randint(2, 9)
    kind = r.choice(["greatest common divisor", "least common multiple"])
    return f"What is the {kind} of {a} and {b}?" if a != b else f"What are all the divisors of {a}?"


def _prime(r):
    return f"Is {r.randint(20, 250)} a prime number? Explain how you can tell."


def _sale(r):
    price, off = r.randrange(20, 300, 5), r.choice([10, 15, 20, 25, 30, 40, 50])
    what = r.choice(
        ["jacket", "lamp", "pair of shoes", "backpack", "bicycle helmet", "board game", "tea set"]
    )
    return f"A {what} costs ${price} and is {off}% off. What is the sale price?"


def _interest(r):
    p, rate, years = r.randrange(500, 5000, 100), r.choice([2, 3, 4, 5, 6]), r.randint(2, 6)
    return f"If you put ${p} in a savings account that pays {rate}% simple interest per year, how much interest do you earn in {years} years?"


def _ages(r):
    a, b = _names(r, 2)
    younger, gap = r.randint(6, 40), r.randint(2, 12)
    return f"{a} is {gap} years older than {b}. Together their ages add up to {2 * younger + gap}. How old is each of them?"


def _units(r):
    n = r.randint(2, 48)
    return r.choice(
        [
            f"How many minutes are there in {n} hours?",
            f"How many seconds are there in {n} minutes?",
            f"Convert {n} kilometers to meters.",
            f"How many grams are in {n} kilograms?",
            f"How many days are there in {n} weeks?",
            f"Convert {n * 100} centimeters to meters.",
            f"How many hours are there in {n} days?",
        ]
    )


def _arith(r):
    a, b = r.randint(12, 99), r.randint(12, 99)
    return r.choice(
        [
            f"Compute {a} x {b} and show your steps.",
            f"What is {a * b} divided by {a}?",
            f"What is {a} squared plus {b} squared?",
            f"What is the square root of {a * a}?",
            f"What is 2 to the power of {r.randint(5, 16)}?",
            f"What is the sum of all whole numbers from 1 to {a}?",
        ]
    )


def _work(r):
    n, h = r.randint(2, 6), r.randint(2, 8)
    m = r.choice([d for d in range(2, 41) if (n * h) % d == 0 and d != n])
    return f"{n} workers can paint a fence in {h} hours. How long would {m} workers take, working at the same pace?"


def _wage(r):
    name, w, h, k = r.choice(NAMES), r.randint(12, 40), r.randint(10, 40), r.randint(2, 8)
    return f"{name} earns ${w} an hour and works {h} hours a week. How much does {name} earn in {k} weeks?"


# reasoning: small puzzles with consistent facts


def _order(r):
    cmp, top, bottom = r.choice(
        [
            ("taller", "tallest", "shortest"),
            ("older", "oldest", "youngest"),
            ("faster", "fastest", "slowest"),
            ("heavier", "heaviest", "lightest"),
        ]
    )
    a, b, c, d = _names(r, 4)
    if r.random() < 0.5:
        return f"{a} is {cmp} than {b}, and {b} is {cmp} than {c}. Who is the {r.choice([top, bottom])}?"
    return f"{b} is {cmp} than {c}. {a} is {cmp} than {b}. {c} is {cmp} than {d}. Rank them from {top} to {bottom}."


def _sequence(r):
    start, step, ratio = r.randint(1, 20), r.randint(2, 9), r.choice([2, 3])
    seq = r.choice(
        [
            [start + step * i for i in range(5)],
            [start * ratio**i for i in range(5)],
            [(i + start % 5) ** 2 for i in range(5)],
            [start + i * (i + 1) // 2 * step for i in range(5)],
        ]
    )
    return f"What number comes next in the sequence {', '.join(map(str, seq))}, ...? Explain the pattern."


def _days(r):
    day, n = r.choice(DAYS), r.randint(3, 100)
    return r.choice(
        [
            f"If today is {day}, what day of the week will it be in {n} days?",
            f"If {n} days ago was a {day}, what day of the week is it today?",
        ]
    )


def _clock(r):
    h, m, dh, dm = (
        r.randint(5, 20),
        r.choice([0, 10, 15, 25, 40, 45, 50]),
        r.randint(1, 5),
        r.choice([15, 20, 35, 50]),
    )
    what = r.choice(["train", "ferry", "flight", "bus"])
    return f"A {what} leaves at {h}:{m:02d} and the trip takes {dh} hours and {dm} minutes. What time does it arrive?"


def _machines(r):
    n, m = r.randint(3, 9), r.choice([50, 60, 100, 120])
    return f"If {n} machines make {n} toys in {n} minutes, how long do {m} machines need to make {m} toys?"


def _syllogism(r):
    x, y, z = r.sample(_l("bloops|razzies|wugs|daxes|feps|glorps|tovs|mips|zinks|lorbs"), 3)
    return r.choice(
        [
            f"All {x} are {y}, and all {y} are {z}. Are all {x} also {z}? Explain.",
            f"All {x} are {y}. Some {y} are {z}. Does it follow that some {x} are {z}? Explain.",
            f"No {x} are {y}, and all {z} are {x}. Can any {z} be {y}? Explain your reasoning.",
        ]
    )


def _all_but(r):
    n, k = r.randint(9, 30), r.randint(2, 8)
    who = r.choice(["A farmer", "A shepherd", "A zookeeper", "A girl", "A boy"])
    return f"{who} has {n} {r.choice(['sheep', 'goats', 'rabbits', 'ducks'])}. All but {k} run away. How many are left?"


# extraction: short made-up texts to pull facts out of

PRODUCTS = _l("""blender|backpack|desk lamp|phone case|coffee maker|pair of running shoes|tent|keyboard|rice cooker|
    umbrella|electric kettle|yoga mat|bike light|winter coat|office chair|water bottle|bluetooth speaker|toaster""")
PRAISE = _l("""works exactly as described|is sturdy and easy to clean|arrived a day early|is quieter than I expected|
    looks even better in person|was simple to set up|feels well made|is worth every penny|is very comfortable""")
COMPLAINTS = _l("""it stopped working after two weeks|the zipper broke in the first week|it is much smaller than the photos
    suggest|the instructions were missing|it started making a strange noise|the color faded after one wash|
    customer service never answered my emails|it arrived with a cracked lid|it is heavier than advertised""")
FACTS = _l("""Honeybees communicate the location of flowers through a movement called the waggle dance.|
    The Great Wall of China was built and rebuilt over many centuries by different dynasties.|
    Regular walking can lower blood pressure and improve sleep in older adults.|
    Volcanic soil is often very fertile, which is why farms are common near some volcanoes.|
    The printing press made books cheaper and helped spread literacy across Europe.|
    Octopuses can change the color and texture of their skin to blend into their surroundings.|
    Many cities are planting trees along streets to keep neighborhoods cooler in summer.|
    The first public libraries in many towns were funded by local donations.|
    Sleeping less than six hours a night can make it harder to concentrate at work.|
    Electric buses are quieter than diesel buses and produce no exhaust on the street.|
    Tea was first drunk in China and later spread along trade routes to other countries.|
    Composting food scraps reduces waste and creates rich soil for gardens.|
    Glaciers in many mountain ranges have been shrinking for several decades.|
    Children who read for fun tend to build larger vocabularies.|
    The Moon's gravity is the main cause of the ocean tides on Earth.""")
GROUPS = {
    "fruits": _l("apple|mango|pear|plum|cherry|kiwi|grape|peach"),
    "vegetables": _l("carrot|spinach|onion|potato|broccoli|leek|cabbage|pepper"),
    "mammals": _l("whale|bat|horse|otter|goat|dolphin|mouse|tiger"),
    "birds": _l("penguin|owl|robin|eagle|parrot|swan|crow|ostrich"),
    "metals": _l("iron|copper|gold|silver|zinc|tin|aluminum|nickel"),
    "gases at room temperature": _l("oxygen|helium|nitrogen|neon|argon|hydrogen|chlorine|carbon dioxide"),
}


def _sentiment(r):
    p, good, bad = r.choice(PRODUCTS), r.choice(PRAISE), r.choice(COMPLAINTS)
    review = r.choice(
        [
            f"The {p} {good}.",
            f"The {p} {good}, but {bad}.",
            f"Honestly, {bad}. I am returning the {p}.",
            f"I was unsure about this {p}, but it {good}.",
            f"The {p} is fine overall, although {bad}.",
        ]
    )
    ask = r.choice(
        [
            "Is the sentiment of this review positive, negative, or mixed?",
            "Classify this customer review as positive, negative, or mixed, and say why.",
            "Read this review and tell me how the customer feels about the product.",
        ]
    )
    return f'{ask}\n"{review}"'


def _entities(r):
    a, b = _names(r, 2)
    c1, c2 = r.sample(CITIES, 2)
    place = r.choice(
        ["city museum", "university library", "central station", "old harbor", "botanical garden"]
    )
    text = f"{a} flew from {c1} to {c2} on {r.choice(DAYS)} to meet {b} at the {place}."
    ask = r.choice(
        [
            "List every person and every place mentioned in this sentence:",
            "Identify the people, cities, and days in the following text:",
        ]
    )
    return f'{ask}\n"{text}"'


def _dates(r):
    events = r.sample(
        _l(
            "the team meeting|the rent payment|the dentist visit|the school play|the project deadline|"
            "the flight home|the library book return|the garden party"
        ),
        3,
    )
    note = " ".join(f"{e.capitalize()} is on {_date(r)}." for e in events)
    return f'Extract every date from this note and list them with their events in calendar order:\n"{note}"'


def _to_json(r):
    people = [
        f"{n} is a {r.randint(19, 75)}-year-old {r.choice(['nurse', 'teacher', 'chef', 'pilot', 'plumber', 'designer'])}"
        f" who lives in {r.choice(CITIES)}."
        for n in _names(r, r.randint(1, 3))
    ]
    return f"Convert this text into JSON with the keys name, age, job, and city:\n{' '.join(people)}"


def _table(r):
    what, unit, low, high = r.choice(
        [
            ("population", "people", 2000, 90000),
            ("rainfall last year", "mm", 300, 1500),
            ("number of schools", "", 3, 40),
        ]
    )
    towns = r.sample(TOWNS, r.randint(4, 6))
    rows = "\n".join(f"- {t}: {r.randint(low, high)} {unit}".rstrip() for t in towns)
    ask = r.choice(
        [
            "Which town has the highest value and which has the lowest?",
            "List the towns from highest to lowest.",
            "What is the total across all towns?",
        ]
    )
    return f"Here is the {what} for some towns:\n{rows}\n{ask}"


def _actions(r):
    a, b, c = _names(r, 3)
    tasks = r.sample(
        _l(
            "book the venue|send the budget to finance|update the website|order new chairs|call the supplier|"
            "write the newsletter|test the new app|prepare the slides"
        ),
        3,
    )
    note = (
        f"{a} will {tasks[0]} by {r.choice(DAYS)}. {b} agreed to {tasks[1]}. We still need someone to {tasks[2]}; "
        f"{c} said they might help."
    )
    return f'Pull out the action items from this meeting note, with the owner of each:\n"{note}"'


def _contacts(r):
    a, b = _names(r, 2)
    text = (
        f"Hi, this is {a}. You can reach me at {a.lower()}@example.com or 555-01{r.randint(10, 99)}. "
        f"For the delivery, call {b} on 555-01{r.randint(10, 99)}."
    )
    return f'Extract all names, email addresses, and phone numbers from this message:\n"{text}"'


def _sort_groups(r):
    g1, g2 = r.choice(
        [("fruits", "vegetables"), ("mammals", "birds"), ("metals", "gases at room temperature")]
    )
    items = r.sample(GROUPS[g1], 3) + r.sample(GROUPS[g2], 3)
    r.shuffle(items)
    return f"Sort these into {g1} and {g2}: {', '.join(items)}."


def _order_details(r):
    qty, thing = (
        r.randint(2, 40),
        r.choice(_l("folding chairs|boxes of printer paper|bags of coffee|desk plants|lanterns")),
    )
    text = f"Hello, I would like to order {qty} {thing} for our office, delivered to {r.choice(CITIES)} on {_date(r)}. Thanks, {r.choice(NAMES)}"
    return f'From this message, extract the item, quantity, delivery city, date, and customer name:\n"{text}"'


def _fact_task(r):
    ask = r.choice(
        [
            "Give three keywords that capture this sentence:",
            "What is the main topic of this sentence?",
            "Turn this sentence into a quiz question with its answer:",
            "Rewrite this sentence for a young child:",
        ]
    )
    return f'{ask}\n"{r.choice(FACTS)}"'


# slot lists for the string templates ("{slot}" reads SLOTS[slot]; "{slot2}" draws a second, distinct value)

SLOTS = {
    "subject": _l("""autumn leaves|the ocean at night|a lost umbrella|rain on a city street|a grandmother's kitchen|the first
        snow|a lighthouse|the moon|morning coffee|a busy train station|an old bicycle|a summer storm|a garden in spring|
        a sleepy cat|a mountain lake|a small library|a forgotten toy|the first day of school|a slow river|a bakery at
        dawn|a kite on a windy day|a desert at noon|a violin|a quiet Sunday|a paper boat|a broken clock|a hot air
        balloon|a fox in the snow|a street musician|an empty beach in winter|a dragonfly|a candle|the last day of
        summer|a snowman|a window seat|a lemon tree|a pair of old boots|fireflies|a treehouse|the smell of fresh
        bread|a night bus|a field of sunflowers|an old map|a jar of buttons|a thunderstorm at sea"""),
    "character": _l("""a shy robot|a retired sailor|a young baker|a curious squirrel|a lonely astronaut|an old librarian|
        a lost puppy|a clumsy wizard|a teenage inventor|a tired mail carrier|a brave little mouse|a grumpy cat|a
        night-shift nurse|a street painter|a farmer|a ghost who is afraid of the dark|a chess champion|a lighthouse
        keeper|a dragon who loves tea|a nervous bus driver|a penguin who wants to fly|a forgetful professor"""),
    "event": _l("""finds a mysterious key|gets lost in a big city|wins a contest by accident|discovers a hidden garden|
        loses their voice before a big show|receives a letter from the future|befriends a stranger on a train|has to
        cook dinner for a king|builds a boat from scraps|tries to learn to swim|must deliver a package before sunset|
        finds a map inside an old book|plants a seed that grows overnight|opens a tiny shop|misses the last train"""),
    "setting": _l("""a floating city|a small fishing village|a space station orbiting Mars|an underground library|a
        night market|a snowed-in mountain cabin|a castle made of glass|a busy hospital at midnight|a desert oasis|a
        train crossing the tundra|an abandoned amusement park|a rainforest research camp|a tiny island bookshop|a
        city where it never stops raining|a village at the bottom of the sea"""),
    "tone": _l("friendly|polite|formal|warm|short and cheerful|clear and professional"),
    "email": _l("""to your landlord asking them to fix a leaking tap|to a teacher asking for more time on an assignment|
        to a coworker thanking them for their help on a project|to your neighbors about a lost cat|to a hotel asking
        about early check-in|to a customer apologizing for a late delivery|to your team announcing a new meeting
        time|to a friend inviting them to a picnic|to a shop asking for a refund for a broken item|to a manager
        asking for a day off next Friday|to a former professor asking for a reference letter|to a club welcoming
        new members|to parents about a school trip next week|to a plumber asking for a quote"""),
    "product": _l("""a reusable water bottle|noise-cancelling headphones|a handmade wooden chess set|a solar phone
        charger|a lavender-scented candle|a foldable bicycle|a smart plant pot|a wool winter scarf|a travel coffee
        mug|a children's science kit|a waterproof hiking jacket|a set of kitchen knives|a cozy reading lamp"""),
    "occasion": _l("""a best friend's wedding|a retirement party for a coworker|the opening of a community garden|a
        school graduation|a grandparent's 80th birthday|the end of a sports season|a farewell party for a neighbor|
        the first day of a new team|a charity fun run|a family reunion"""),
    "business": _l("""a small bakery|a bike repair shop|a dog-walking service|a used bookstore|a yoga studio|a
        food truck selling tacos|a plant nursery|a tutoring center|a recycling startup|a neighborhood cafe|a
        window-cleaning company|a music school"""),
    "recipient": _l(
        "your grandmother|a former teacher|a neighbor|your cousin|a coworker|an old friend|your coach"
    ),
    "gift": _l("""a birthday book|helping you move house|a homemade cake|looking after your plants|a thoughtful
        letter|lending you their car|a surprise party"""),
    "invite": _l(
        "a board game night|a walk in the park|a concert on Saturday|a picnic by the lake|a movie night"
    ),
    "news": _l("""the opening of a new library branch|a bakery's new bread of the month|a school's science fair|a
        free yoga class in the park|a town clean-up day|the launch of a recycling program|a new bus route"""),
    "word": _l("SUN|RAIN|HOPE|BOOK|TREE|MUSIC|OCEAN|FRIEND|SPRING|LIGHT|GARDEN|DREAM|HOME|RIVER|STAR"),
    "animal": _l("a tortoise|a hare|a crow|a fox|an ant|a lion|a mouse|an owl|a goat|a frog|a bear|a crab"),
    "virtue": _l("patience|honesty|sharing|courage|kindness|hard work|listening|humility"),
    "place": _l("""a small Italian restaurant|a science museum|a seaside campsite|a new climbing gym|a city zoo|a
        rooftop cinema|a vegetarian cafe|a train museum|a botanical garden"""),
    "situation": _l("""starting a new job|training for a first marathon|studying for final exams|learning to play
        the piano|moving to a new country|recovering from an injury|learning a new language"""),
    "lang": ["Python"] * 4 + _l("JavaScript|Java|C|C++|Go|Rust|TypeScript|Ruby"),
    "task": _l("""reverses a string|checks whether a number is prime|counts the vowels in a string|returns the
        largest number in a list|removes duplicates from a list while keeping order|checks whether a word is a
        palindrome|converts Celsius to Fahrenheit|computes the factorial of a number|merges two sorted lists into
        one sorted list|finds the second largest number in a list|counts how often each word appears in a
        sentence|checks whether two strings are anagrams|flattens a nested list|returns the sum of the digits of an
        integer|converts an integer to its binary representation|finds the greatest common divisor of two numbers|
        capitalizes the first letter of every word|checks whether a year is a leap year|returns the average of a
        list of numbers|rotates a list by k positions|splits a list into chunks of size n|validates a simple email
        address|computes the running total of a list|finds the most common character in a string|checks whether a
        list is sorted|performs binary search on a sorted list|reverses the order of words in a sentence|removes
        all whitespace from a string|returns the items that two lists have in common|converts Roman numerals to
        integers|finds the missing number in a list containing 1 to n|returns the longest word in a sentence|
        counts the uppercase letters in a string|sums the even numbers in a list|swaps the keys and values of a
        dictionary|formats a number of seconds as hours, minutes and seconds|removes negative numbers from a list|
        checks whether parentheses in a string are balanced|sorts a list of words by length|returns the first
        non-repeating character in a string"""),
    "snippet": [
        "def f(xs):\n    return [x * 2 for x in xs if x % 2 == 0]",
        "total = 0\nfor i in range(1, 11):\n    total += i\nprint(total)",
        "def g(s):\n    return s == s[::-1]",
        "counts = {}\nfor word in text.split():\n    counts[word] = counts.get(word, 0) + 1",
        "top = sorted(set(nums), reverse=True)[:3]",
        "const evens = arr.filter(x => x % 2 === 0).map(x => x * x);",
        "with open('log.txt') as f:\n    errors = [line for line in f if 'ERROR' in line]",
        "a, b = b, a",
        "digits = []\nwhile n > 0:\n    digits.append(n % 10)\n    n //= 10",
        "def merge(a, b):\n    return {**a, **b}",
        "longest = max(sentence.split(), key=len)",
        "find . -name '*.log' -mtime +7 -delete",
        "SELECT city, COUNT(*) FROM customers GROUP BY city ORDER BY COUNT(*) DESC;",
        "squares = {n: n * n for n in range(1, 6)}",
    ],
    "buggy": [
        "def last_item(xs):\n    return xs[len(xs)]",
        "def add_item(item, items=[]):\n    items.append(item)\n    return items",
        "def sum_to(n):\n    # should return 1 + 2 + ... + n\n    total = 0\n    for i in range(n):\n        total += i\n    return total",
        "def greet(name, age):\n    return 'Hi ' + name + ', you are ' + age",
        "def remove_evens(xs):\n    for x in xs:\n        if x % 2 == 0:\n            xs.remove(x)\n    return xs",
        "def factorial(n):\n    if n == 0:\n        return 0\n    return n * factorial(n - 1)",
        "def maximum(xs):\n    best = 0\n    for x in xs:\n        if x > best:\n            best = x\n    return best",
        "def contains(xs, target):\n    for x in xs:\n        if x == target:\n            return True\n        else:\n            return False",
        "def average(xs):\n    return sum(xs) / len(xs)\n\nprint(average([]))",
    ],
    "code_pair": _l("""a list and a tuple in Python|== and is in Python|let and const in JavaScript|== and === in
        JavaScript|a process and a thread|a compiled and an interpreted language|git merge and git rebase|WHERE and
        HAVING in SQL|an HTTP GET and POST request|a shallow copy and a deep copy|a class and an object|a stack and
        a queue|an array and a linked list|a function and a method|static and dynamic typing|a library and a
        framework|unit tests and integration tests|synchronous and asynchronous code"""),
    "code_concept": _l("""recursion|variables|loops|APIs|unit tests|version control|Big O notation|hash tables|
        object-oriented programming|exceptions|regular expressions|pointers|JSON|environment variables|caching|
        databases and indexes|the call stack|type hints in Python|pure functions|immutability"""),
    "sql": _l("""lists all customers from a table named customers who live in Paris|counts the orders for each
        customer in a table named orders|finds the five most expensive products in a products table|returns the
        average salary per department from an employees table|deletes all rows older than one year from a logs
        table|finds employees who earn more than their manager|lists the months with more than 100 sales"""),
    "shell": _l("""undo my last git commit but keep the changes|find all files larger than 100 MB on Linux|count the
        lines in every Python file in a folder|rename many files at once in a shell|see which process is using port
        8080|create a Python virtual environment|schedule a script to run every night on Linux|compare two text
        files from the command line"""),
    "math_concept": _l("""a prime number|a fraction|a percentage|a ratio|the median|the mean|a variable|a function|
        the slope of a line|a square root|an exponent|a factorial|probability|a negative number|the Pythagorean
        theorem|a right angle|an equation|place value|a histogram|standard deviation|a logarithm|an inequality"""),
    "math_howto": _l("""the area of a circle|the mean of a list of numbers|the slope of a line through two points|a
        percentage increase|the volume of a cube|the least common multiple of two numbers|the hypotenuse of a right
        triangle|the volume of a cylinder|the sum of the angles of a polygon|a 15% tip in your head"""),
    "analogy": _l("""Bird is to nest as bee is to what?|Glove is to hand as sock is to what?|Pen is to writer as brush
        is to what?|Hot is to cold as tall is to what?|Page is to book as brick is to what?|Puppy is to dog as
        kitten is to what?|Thermometer is to temperature as clock is to what?|Fish is to water as bird is to what?|
        Chapter is to novel as scene is to what?|Seed is to tree as egg is to what?|Key is to lock as password is
        to what?"""),
    "odd": _l("""apple, banana, carrot, cherry|Mars, Venus, Moon, Jupiter|violin, cello, trumpet, harp|square,
        triangle, circle, cube|oak, pine, rose, maple|shark, dolphin, whale, seal|Paris, Berlin, Spain, Rome|two,
        four, seven, ten|copper, iron, glass, silver|hammer, saw, nail, screwdriver|January, Monday, March, May"""),
    "observation": _l("""street is wet, but it did not rain last night|shop is closed on a weekday afternoon|plant on the
        windowsill is wilting even though it was watered|car will not start on a cold morning|dog barks every
        evening at the same time|classroom is empty at 10 a.m. on a school day|milk went sour a day before its
        date|lights in the whole street went out at once|bread did not rise this time|train was half empty during
        rush hour"""),
    "claim": _l("""A square is a rectangle.|The product of two odd numbers is even.|If it is raining, the ground is
        wet.|A person who is older than you was born before you.|Adding a positive number makes a number bigger.|
        Every month has at least 30 days.|A triangle can have two right angles.|Heavier objects always sink in
        water.|If all roses are flowers, then all flowers are roses."""),
    "argument": _l("""Everyone at my school likes this band, so it must be the best band in the world.|My uncle smoked
        and lived to 95, so smoking is not harmful.|You cannot prove that ghosts do not exist, so they must exist.|
        If we let students use phones in class, soon nobody will learn anything.|This diet is natural, so it must
        be healthy.|He is not a scientist, so his point about recycling must be wrong.|We have always done it this
        way, so it is the right way."""),
    "riddle": _l("""What has keys but cannot open locks?|What gets wetter the more it dries?|What has hands but cannot
        clap?|What can you catch but not throw?|What has a neck but no head?|What goes up but never comes down?|
        What has many teeth but cannot bite?|What belongs to you, but other people use it more than you do?"""),
    "stem_concept": _l("""gravity|friction|photosynthesis|evaporation|the water cycle|electric current|magnetism|
        inertia|density|sound waves|the greenhouse effect|plate tectonics|DNA|natural selection|the immune system|
        cell division|acids and bases|chemical bonds|the periodic table|energy conservation|black holes|the speed of
        light|the Big Bang|vaccines|antibiotics|the nitrogen cycle|erosion|food chains|ecosystems|the human
        heart|neurons|nuclear fusion|radioactivity|static electricity|buoyancy|air pressure|the Doppler effect|
        semiconductors|algorithms|encryption|the internet|climate feedback loops|osmosis|enzymes|pH|lenses|
        refraction|orbits|tides|biodiversity|fossils|the carbon cycle"""),
    "level": _l("""in simple terms|to a high school student|for a ten-year-old|using an everyday analogy|in three or four
        sentences|as if I had never studied science"""),
    "whyq": _l("""is the sky blue|do we have seasons|does ice float on water|do leaves change color in autumn|does salt
        melt ice on roads|do we see lightning before we hear thunder|does metal feel colder than wood|do onions make
        people cry|is the ocean salty|does bread rise|do cats purr|do stars twinkle|does the Moon change shape|do
        we need sleep|does a spoon look bent in a glass of water|do birds fly south for the winter|do our ears pop
        on airplanes|is Mars red|do bubbles look colorful|does hot air rise|do we get goosebumps|does popcorn pop"""),
    "cause": _l("""tides|earthquakes|rainbows|thunder|the northern lights|rust on iron|the phases of the Moon|ocean waves|
        fog|hiccups|muscle cramps|wind|volcanic eruptions|a solar eclipse|static shocks|echoes|jet lag|allergies"""),
    "stem_pair": _l("""weather and climate|speed and velocity|mass and weight|a virus and a bacterium|an atom and a
        molecule|mitosis and meiosis|AC and DC current|a planet and a star|heat and temperature|a meteor and a
        comet|an element and a compound|renewable and non-renewable energy|an asteroid and a comet|a solid and a
        liquid|an herbivore and a carnivore|a hypothesis and a theory|RAM and storage|analog and digital signals"""),
    "device": _l("""a refrigerator|a microwave oven|a solar panel|GPS|a thermometer|a battery|an electric motor|a
        touch screen|a camera|a wind turbine|a heat pump|a smoke detector|an elevator|noise-cancelling headphones|
        a bicycle gear system|a compass|a hydroelectric dam|a 3D printer|an airplane wing|a fridge magnet"""),
    "few": _l("three|four|five"),
    "stem_examples": _l("""simple machines|chemical changes in everyday life|renewable energy sources|invertebrates|
        good conductors of electricity|insulators|mammals that live in the ocean|planets in our solar system|
        states of matter|forces we feel every day|inventions that changed medicine|animals that hibernate"""),
    "whatif": _l("""the Moon disappeared|Earth stopped spinning|all insects vanished|water did not expand when it
        froze|there was no friction|humans could photosynthesize|the Sun suddenly became twice as bright|Earth had
        no atmosphere|all the ice on Earth melted"""),
    "event_h": _l("""the French Revolution|World War I|the fall of the Western Roman Empire|the Great Depression|the
        American Civil War|the Industrial Revolution|the collapse of the Soviet Union|the Protestant Reformation|the
        end of apartheid in South Africa|the Meiji Restoration|the partition of India|the Black Death|the printing
        revolution in Europe|the Cuban Missile Crisis|the fall of the Berlin Wall|the Age of Exploration"""),
    "thinker": _l("""Confucius|Aristotle|Plato|Immanuel Kant|John Locke|Simone de Beauvoir|Karl Marx|Adam Smith|
        Friedrich Nietzsche|Mary Wollstonecraft|Hannah Arendt|Lao Tzu|Rene Descartes|David Hume|Jean-Jacques
        Rousseau|John Stuart Mill|Epicurus|Marcus Aurelius|Ibn Khaldun|Thomas Hobbes|Baruch Spinoza"""),
    "question": _l("""what makes a life good|whether people are naturally kind|what makes a government fair|whether
        we should always tell the truth|what true friendship is|how to deal with anger"""),
    "movement": _l("""Impressionism|Cubism|Surrealism|the Renaissance|Baroque art|Romanticism|Pop Art|Art Nouveau|
        Expressionism|Minimalism|the Bauhaus|Dada"""),
    "work": _l("""Hamlet by William Shakespeare|Pride and Prejudice by Jane Austen|Nineteen Eighty-Four by George
        Orwell|Don Quixote by Miguel de Cervantes|The Odyssey by Homer|War and Peace by Leo Tolstoy|Things Fall
        Apart by Chinua Achebe|Frankenstein by Mary Shelley|The Divine Comedy by Dante|The Tale of Genji by Murasaki
        Shikibu|Moby-Dick by Herman Melville|Jane Eyre by Charlotte Bronte|The Little Prince by Antoine de
        Saint-Exupery|Crime and Punishment by Fyodor Dostoevsky|To Kill a Mockingbird by Harper Lee"""),
    "hum_concept": _l("""supply and demand|opportunity cost|the social contract|cultural relativism|the separation of
        powers|federalism|utilitarianism|stoicism|existentialism|comparative advantage|urbanization|nationalism|
        cognitive dissonance|confirmation bias|the tragedy of the commons|soft power|civil disobedience|the
        placebo effect|human rights|the rule of law|globalization|the scientific revolution"""),
    "hum_pair": _l("""democracy and monarchy|capitalism and socialism|ancient Athens and Sparta|Greek and Roman
        mythology|Romanticism and Realism in literature|a republic and a direct democracy|Stoicism and Epicureanism|
        Renaissance and medieval art|poetry and prose|weather myths and modern science"""),
    "period": _l("""the Maya civilization|the Ottoman Empire|the Tang dynasty|the Mali Empire|the Viking Age|the Silk
        Road|ancient Egypt|the Inca Empire|the Mughal Empire|the Harlem Renaissance|the Enlightenment|the Byzantine
        Empire|the Aztec capital Tenochtitlan|the Hanseatic League"""),
    "institution": _l(
        "a free press|independent courts|regular elections|political parties|local government|public schools"
    ),
    "tradition": _l("""Diwali|the Lunar New Year|the Day of the Dead in Mexico|Hanukkah|Nowruz|Thanksgiving in the
        United States|Eid al-Fitr|the Mid-Autumn Festival|Holi|Midsummer in Sweden|Carnival in Brazil|Obon in Japan"""),
    "role": _l("""a pirate captain|a medieval knight|a friendly museum guide|a barista in a busy cafe|a teacher at a school
        for wizards|a detective in the 1920s|a robot from the year 3000|a park ranger|a chef at a busy restaurant|the
        commander of a space station|a kindergarten teacher|a football coach|a school librarian|a travel agent|a
        fitness trainer|a customer support agent for an internet company|a wise old owl|a talking cat|a radio news
        reporter|a shopkeeper in a fantasy village|a ship's cook|a zookeeper|a baker in ancient Rome|a game show
        host|a career counselor|a gardener at a royal palace|a mountain guide|a medieval monk who copies books|a
        firefighter|a tired airline pilot|a cheerful weather forecaster|a taxi driver in a big city|a beekeeper"""),
    "rp_task": _l("""Introduce yourself to a new visitor.|Describe a typical day at work.|Give me one piece of advice
        for life.|Tell me about the hardest challenge you have faced.|Welcome me and ask how you can help.|Explain
        the most important rule of your job.|Describe the place where you work.|What do you love most about your
        work?|Tell me about a funny mistake you once made.|What is your favorite time of day, and why?|Teach me one
        skill from your job.|Describe your best friend.|What would you change about your job if you could?"""),
    "job": _l("""a junior web developer|a cafe manager|a museum guide|a summer camp counselor|a bank teller|a science
        teacher|a hotel receptionist|a data analyst|a delivery driver|a graphic designer"""),
    "returned": _l(
        "a pair of shoes that are too small|a toaster that does not work|a sweater with a hole in it|a lamp"
    ),
    "howto": _l("""get a coffee stain out of a white shirt|keep basil alive indoors|boil an egg with a soft yolk|make
        my phone battery last longer|fall asleep faster|start running if I have never run before|save money on
        groceries|pack a suitcase for a week-long trip|clean a cast iron pan|prepare for a job interview|keep my
        houseplants alive while I am on vacation|remember people's names|make a simple monthly budget|unclog a
        sink without chemicals|stop procrastinating|cook rice that is not sticky|organize a small closet|make
        friends in a new city|learn to touch type|get rid of fruit flies in the kitchen|write a good cover letter|
        keep my desk tidy|sharpen a kitchen knife|reduce screen time in the evening|choose a ripe avocado|wash a
        wool sweater|stay focused while working from home|start journaling|fix a squeaky door|plan meals for the
        week|stretch after sitting all day|keep cut flowers fresh longer|introduce a new cat to my dog"""),
    "ideas_for": _l("""a rainy Saturday with kids|a cheap date night|a birthday gift for a dad who likes fishing|a
        healthy breakfast|a team-building activity at work|a small balcony garden|a long car trip|a picnic menu|
        a book club's next meeting|a low-cost hobby|a themed dinner party|a science project for a 12-year-old|
        things to do in winter|a thank-you gift for a teacher|using up leftover rice"""),
    "decide": _l("""buying a used car|choosing a laptop for school|adopting a dog|moving to a new city|joining a gym|
        renting my first apartment|switching careers|buying a bike for commuting|starting a small online shop|
        taking a gap year"""),
    "either": _l("""rent or buy a home|study in the morning or at night|walk or cycle to work|buy a new or a used phone|
        cook at home or eat out|take notes by hand or on a laptop|exercise before or after work|read e-books or
        paper books"""),
    "ingredient": _l("""eggs|rice|spinach|chickpeas|tomatoes|cheese|potatoes|pasta|tofu|mushrooms|lentils|chicken|
        onions|bread|yogurt|carrots|beans|zucchini|peppers|oats"""),
    "interest": _l("food|history|art|hiking|music|architecture|markets|photography|beaches|museums"),
    "days": _l("two|three|four"),
    "problem": _l("""My bread always comes out dense.|My laptop has become very slow.|My tomato plants have yellow leaves.|
        My cat keeps scratching the sofa.|My phone gets hot when I charge it.|My houseplant is dropping its leaves.|
        My rice is always mushy.|My bike chain keeps falling off.|My Wi-Fi is slow in one room.|My shoes smell bad.|
        I wake up tired even after eight hours of sleep.|My sourdough starter smells like vinegar."""),
    "often": _l("""water a cactus|replace my toothbrush|wash my bed sheets|change the oil in my car|back up my computer|
        clean my refrigerator|replace my running shoes|update my phone|descale my kettle"""),
    "city": CITIES,
}

# per category: templates (strings with [a|b] and {slot}, or functions), short extra instructions, follow-ups

SPECS: dict[str, dict] = {
    "writing": {
        "templates": [
            "[Write|Compose] a short poem about {subject}.",
            "Write a haiku about {subject}.",
            "Write a four-line rhyming poem about {subject}.",
            "Write a limerick about {character}.",
            "Write a short story, about five sentences long, about {character} who {event}.",
            "Tell a short bedtime story about {character} who {event}.",
            "Write the opening paragraph of a story set in {setting}.",
            "Write a {tone} email {email}.",
            "Write a short product description for {product}.",
            "[Write|Come up with] three slogans for {business}.",
            "Draft a short speech for {occasion}.",
            "Write a short toast for {occasion}.",
            "Write a diary entry from the point of view of {character}.",
            "Write a short thank-you note to {recipient} for {gift}.",
            "Write a short dialogue between {character} and {character2}.",
            "Describe {setting} in one vivid paragraph.",
            "Write a social media post announcing {news}.",
            "Write a text message inviting {recipient} to {invite}.",
            "Write a two-sentence spooky story set in {setting}.",
            "Write an acrostic poem for the word {word}.",
            "Write a short fable about {animal} and {animal2} that teaches a lesson about {virtue}.",
            "Write a short review of {place}, as if you had just visited it.",
            "Write an encouraging message for someone who is {situation}.",
        ],
        "suffixes": _l(
            "Keep it under 100 words.|Use simple words.|Make it light-hearted.|Keep it short.|Give it a title."
        ),
        "followups": _l("""Now make it about half as long.|Can you suggest a good title for it?|Now rewrite it in a more
            formal style.|Make it funnier.|Rewrite it for a six-year-old reader.|Which line do you like best, and
            why?|Add one sentence that gives it a surprising ending.|Now write it from a different character's point
            of view.|Rewrite it so that it sounds more cheerful."""),
    },
    "reasoning": {
        "templates": [
            _order,
            _order,
            _sequence,
            _sequence,
            _days,
            _clock,
            _machines,
            _syllogism,
            _syllogism,
            _all_but,
            "Complete the analogy: {analogy} Explain your answer.",
            "Which one is the odd one out: {odd}? Explain your choice.",
            "The {observation}. Give three possible explanations.",
            'Is this statement always true, sometimes true, or never true? "{claim}" Explain.',
            'What is wrong with this argument? "{argument}"',
            "Here is a riddle: {riddle}",
        ],
        "suffixes": _l("Think step by step.|Explain your reasoning.|Show your reasoning briefly."),
        "followups": _l("""How could you check that your answer is right?|Can you explain it in a different way?|Make
            up a similar puzzle for me to solve.|What is the most common mistake people make on this kind of
            question?|What would change if one of the facts were different?"""),
    },
    "coding": {
        "templates": [
            "Write a {lang} function that {task}.",
            "Write a {lang} function that {task}.",
            "How would you write a {lang} function that {task}?",
            "In {lang}, write code that {task}.",
            "Explain what this code does:\n```\n{snippet}\n```",
            "This Python function has a bug:\n```python\n{buggy}\n```\nWhat is wrong, and how would you fix it?",
            "Find and fix the mistake in this code:\n```python\n{buggy}\n```",
            "What is the difference between {code_pair}?",
            "Explain {code_concept} to a beginner programmer.",
            "[Write|Give me] a SQL query that {sql}.",
            "How do I {shell}?",
            "What are common mistakes beginners make with {code_concept}?",
        ],
        "suffixes": _l("Keep it short.|Explain it briefly.|Keep your answer concise."),
        "followups": _l("""Can you add a few test cases?|What is the time complexity of your solution?|How would you
            handle an empty input?|Can you explain the code line by line?|Now write the same thing in JavaScript.|
            Can you make it shorter?"""),
    },
    "math": {
        "templates": [
            _percent,
            _equation,
            _change,
            _speed,
            _area,
            _area,
            _fractions,
            _average,
            _marbles,
            _recipe,
            _divisors,
            _prime,
            _sale,
            _interest,
            _ages,
            _units,
            _arith,
            _arith,
            _work,
            _wage,
            "Explain what {math_concept} is, with a simple example.",
            "How do you find {math_howto}?",
        ],
        "suffixes": _l(
            "Show your work.|Explain each step.|Give just the answer and one line of explanation."
        ),
        "followups": _l("""Can you check your answer a different way?|Now explain it as if I were ten years old.|What
            would change if all the numbers were doubled?|Write a similar problem for me to practice.|Which step is
            the easiest to get wrong?"""),
    },
    "extraction": {
        "templates": [
            _sentiment,
            _sentiment,
            _entities,
            _dates,
            _to_json,
            _table,
            _actions,
            _contacts,
            _sort_groups,
            _order_details,
            _fact_task,
        ],
        "suffixes": [],
        "followups": _l("""Now give the result as a JSON object.|Present the same information as a table.|Which part of
            the text was the hardest to interpret?|Now do the same, but as a bulleted list."""),
    },
    "stem": {
        "templates": [
            "Explain {stem_concept} {level}.",
            "What is {stem_concept}, and why does it matter?",
            "Why {whyq}?",
            "What causes {cause}?",
            "What is the difference between {stem_pair}?",
            "How does {device} work?",
            "Give {few} examples of {stem_examples} and say one thing about each.",
            "What would happen if {whatif}?",
            "[Explain|Describe] how {device} works {level}.",
        ],
        "suffixes": _l("Keep it short.|Avoid jargon.|Answer in a few sentences."),
        "followups": _l("""Can you give a real-world example?|How do scientists know this?|What is a common
            misconception about this?|Can you explain it with an analogy?|What should I learn next to understand
            this better?"""),
    },
    "humanities": {
        "templates": [
            "What were the main causes of {event_h}?",
            "What were the most important consequences of {event_h}?",
            "Describe {event_h} in a short paragraph.",
            "Summarize the main ideas of {thinker} in a few sentences.",
            "What is {thinker} best known for?",
            "How might {thinker} answer the question of {question}?",
            "What is {movement}, and who are some artists associated with it?",
            "How did {movement} change the way people made art?",
            "Why is {work} still read today?",
            "Give a short summary of {work} without spoiling the ending.",
            "What are the main themes of {work}?",
            "Explain the idea of {hum_concept} with an everyday example.",
            "What are the main differences between {hum_pair}?",
            "Give a short overview of {period}.",
            "What is {period} remembered for?",
            "What role does {institution} play in a democracy?",
            "What is the meaning of {tradition}, and how is it celebrated?",
        ],
        "suffixes": _l("Keep it brief.|Use simple language.|Answer in one paragraph.|Mention one example."),
        "followups": _l("""Why does this still matter today?|Can you recommend a book to learn more?|What do critics say
            about this?|How would you explain this to a teenager?|What is one common myth about this?"""),
    },
    "roleplay": {
        "templates": [
            "[Pretend you are|Imagine you are|Act as|Play the role of|You are] {role}. {rp_task}",
            "[Pretend you are|Imagine you are|Act as|Play the role of|You are] {role}. {rp_task}",
            "Let's practice a job interview. You are interviewing me for a job as {job}. Ask me your first question.",
            "You are a tour guide in {city}. Recommend three places I should see and tell me why.",
            "I am a customer returning {returned} to your shop. You are the shop assistant. Start the conversation.",
            "You are {role}, and I am a new helper on my first day. Tell me what I need to know.",
            "Stay in character as {role} and tell me a short story from your past.",
        ],
        "suffixes": _l("Stay in character.|Keep it short.|Speak in the first person."),
        "followups": _l("""Stay in character and tell me what happens next.|What would you say to a child who asked you the
            same thing?|Now answer as if you were very tired.|What advice would you give someone who wants your job?|
            What is your biggest dream?"""),
    },
    "everyday": {
        "templates": [
            "How do I {howto}?",
            "What's the [best|easiest|simplest] way to {howto}?",
            "Any tips on how to {howto}?",
            "I want to {howto}. Where should I start?",
            "Give me {few} ideas for {ideas_for}.",
            "What are some good ideas for {ideas_for}?",
            "What should I think about before {decide}?",
            "I'm thinking about {decide}. What questions should I ask myself first?",
            "Is it better to {either}? Give the pros and cons of each.",
            "Suggest a simple meal I can make with {ingredient}, {ingredient2} and {ingredient3}.",
            "Plan a {days}-day trip to {city} for someone who loves {interest}.",
            "{problem} What could be causing it, and what can I do?",
            "How often should I {often}?",
        ],
        "suffixes": _l("Keep it practical.|A short list is fine.|Keep it short."),
        "followups": _l("""Thanks! What should I do first?|What if I am on a tight budget?|Can you give me one more
            suggestion?|What is the most common mistake people make here?|Which of these matters most?"""),
    },
}
GENERIC_FOLLOWUPS = _l("""Can you summarize that in one sentence?|Can you explain that more simply?|Could you put that as
    a short bulleted list?|What is the key takeaway?|Can you make your answer shorter?""")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(HERE, "smollm2", "prompts.jsonl"), help="output JSONL")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed of the build")
    parser.add_argument("--per-category", type=int, default=PER_CATEGORY, help="prompts per category")
    parser.add_argument("--mt-bench", default=MT_BENCH, help="MT-Bench questions to exclude")
    args = parser.parse_args(argv)
    records = build_prompts(args.seed, args.per_category, args.mt_bench)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(render(records))
    print(f"wrote {args.out}: {summary(records)}")


if __name__ == "__main__":
    main()
