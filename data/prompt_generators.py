"""Prompt generators for data/prompts.py: functions of a seeded random.Random that build one prompt each (math
word problems with fresh numbers, reasoning puzzles, extraction texts). Pure functions of the generator's state."""

from __future__ import annotations

import random

from data.prompt_slots import (
    CITIES,
    COMPLAINTS,
    DAYS,
    FACTS,
    GROUPS,
    ITEMS,
    MONTHS,
    NAMES,
    PRAISE,
    PRODUCTS,
    TOWNS,
    _l,
)


def _names(r: random.Random, k: int) -> list[str]:
    return r.sample(NAMES, k)


def _date(r: random.Random) -> str:
    return f"{r.choice(MONTHS)} {r.randint(1, 28)}"


# math: numbers are drawn so every problem has a clean answer


def percent(r):
    return f"What is {r.choice([5, 10, 12, 15, 20, 25, 30, 40, 60, 75])}% of {r.randrange(40, 1000, 10)}?"


def equation(r):
    a, x, b = r.randint(2, 12), r.randint(-10, 15), r.randint(1, 40)
    eq = f"{a}x + {b} = {a * x + b}"
    return r.choice([f"Solve for x: {eq}.", f"Find x if {eq}.", f"What value of x makes {eq} true?"])


def change(r):
    name, n, price = r.choice(NAMES), r.randint(2, 9), r.randint(2, 15)
    bill = next(b for b in (20, 50, 100, 200) if b > n * price)
    return f"{name} buys {n} {r.choice(ITEMS)} at ${price} each and pays with a ${bill} bill. How much change does {name} get?"


def speed(r):
    speed, hours = r.randrange(30, 120, 5), r.randint(2, 6)
    what = r.choice(["car", "train", "bus", "truck", "motorbike"])
    return f"A {what} travels {speed * hours} km in {hours} hours. What is its average speed?"


def area(r):
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


def fractions(r):
    a, b, c, d = r.randint(1, 5), r.randint(2, 9), r.randint(1, 5), r.randint(2, 9)
    op = r.choice(["+", "-", "times"])
    return f"What is {a}/{b} {op} {c}/{d}? Give the answer as a fraction in lowest terms."


def average(r):
    nums = [r.randint(2, 60) for _ in range(r.randint(4, 7))]
    what = r.choice(["mean", "median", "mean and the median", "range"])
    return f"What is the {what} of these numbers: {', '.join(map(str, nums))}?"


def marbles(r):
    red, blue, green = r.randint(1, 9), r.randint(1, 9), r.randint(1, 6)
    color = r.choice(["red", "blue", "green", "not red"])
    return (
        f"A bag holds {red} red, {blue} blue and {green} green marbles. If you take one without looking, "
        f"what is the probability that it is {color}?"
    )


def recipe(r):
    flour, batch = r.randint(2, 4), r.choice([12, 20, 24, 30])
    return f"A recipe uses {flour} cups of flour to make {batch} cookies. How much flour do you need for {batch * r.choice([3, 4, 5]) // 2} cookies?"


def divisors(r):
    g = r.randint(2, 12)
    a, b = g * r.randint(2, 9), g * r.randint(2, 9)
    kind = r.choice(["greatest common divisor", "least common multiple"])
    return f"What is the {kind} of {a} and {b}?" if a != b else f"What are all the divisors of {a}?"


def prime(r):
    return f"Is {r.randint(20, 250)} a prime number? Explain how you can tell."


def sale(r):
    price, off = r.randrange(20, 300, 5), r.choice([10, 15, 20, 25, 30, 40, 50])
    what = r.choice(
        ["jacket", "lamp", "pair of shoes", "backpack", "bicycle helmet", "board game", "tea set"]
    )
    return f"A {what} costs ${price} and is {off}% off. What is the sale price?"


def interest(r):
    p, rate, years = r.randrange(500, 5000, 100), r.choice([2, 3, 4, 5, 6]), r.randint(2, 6)
    return f"If you put ${p} in a savings account that pays {rate}% simple interest per year, how much interest do you earn in {years} years?"


def ages(r):
    a, b = _names(r, 2)
    younger, gap = r.randint(6, 40), r.randint(2, 12)
    return f"{a} is {gap} years older than {b}. Together their ages add up to {2 * younger + gap}. How old is each of them?"


def units(r):
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


def arith(r):
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


def work(r):
    n, h = r.randint(2, 6), r.randint(2, 8)
    m = r.choice([d for d in range(2, 41) if (n * h) % d == 0 and d != n])
    return f"{n} workers can paint a fence in {h} hours. How long would {m} workers take, working at the same pace?"


def wage(r):
    name, w, h, k = r.choice(NAMES), r.randint(12, 40), r.randint(10, 40), r.randint(2, 8)
    return f"{name} earns ${w} an hour and works {h} hours a week. How much does {name} earn in {k} weeks?"


# reasoning: small puzzles with consistent facts


def order(r):
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


def sequence(r):
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


def days(r):
    day, n = r.choice(DAYS), r.randint(3, 100)
    return r.choice(
        [
            f"If today is {day}, what day of the week will it be in {n} days?",
            f"If {n} days ago was a {day}, what day of the week is it today?",
        ]
    )


def clock(r):
    h, m, dh, dm = (
        r.randint(5, 20),
        r.choice([0, 10, 15, 25, 40, 45, 50]),
        r.randint(1, 5),
        r.choice([15, 20, 35, 50]),
    )
    what = r.choice(["train", "ferry", "flight", "bus"])
    return f"A {what} leaves at {h}:{m:02d} and the trip takes {dh} hours and {dm} minutes. What time does it arrive?"


def machines(r):
    n, m = r.randint(3, 9), r.choice([50, 60, 100, 120])
    return f"If {n} machines make {n} toys in {n} minutes, how long do {m} machines need to make {m} toys?"


def syllogism(r):
    x, y, z = r.sample(_l("bloops|razzies|wugs|daxes|feps|glorps|tovs|mips|zinks|lorbs"), 3)
    return r.choice(
        [
            f"All {x} are {y}, and all {y} are {z}. Are all {x} also {z}? Explain.",
            f"All {x} are {y}. Some {y} are {z}. Does it follow that some {x} are {z}? Explain.",
            f"No {x} are {y}, and all {z} are {x}. Can any {z} be {y}? Explain your reasoning.",
        ]
    )


def all_but(r):
    n, k = r.randint(9, 30), r.randint(2, 8)
    who = r.choice(["A farmer", "A shepherd", "A zookeeper", "A girl", "A boy"])
    return f"{who} has {n} {r.choice(['sheep', 'goats', 'rabbits', 'ducks'])}. All but {k} run away. How many are left?"


def sentiment(r):
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


def entities(r):
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


def dates(r):
    events = r.sample(
        _l(
            "the team meeting|the rent payment|the dentist visit|the school play|the project deadline|"
            "the flight home|the library book return|the garden party"
        ),
        3,
    )
    note = " ".join(f"{e.capitalize()} is on {_date(r)}." for e in events)
    return f'Extract every date from this note and list them with their events in calendar order:\n"{note}"'


def to_json(r):
    people = [
        f"{n} is a {r.randint(19, 75)}-year-old {r.choice(['nurse', 'teacher', 'chef', 'pilot', 'plumber', 'designer'])}"
        f" who lives in {r.choice(CITIES)}."
        for n in _names(r, r.randint(1, 3))
    ]
    return f"Convert this text into JSON with the keys name, age, job, and city:\n{' '.join(people)}"


def table(r):
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


def actions(r):
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


def contacts(r):
    a, b = _names(r, 2)
    text = (
        f"Hi, this is {a}. You can reach me at {a.lower()}@example.com or 555-01{r.randint(10, 99)}. "
        f"For the delivery, call {b} on 555-01{r.randint(10, 99)}."
    )
    return f'Extract all names, email addresses, and phone numbers from this message:\n"{text}"'


def sort_groups(r):
    g1, g2 = r.choice(
        [("fruits", "vegetables"), ("mammals", "birds"), ("metals", "gases at room temperature")]
    )
    items = r.sample(GROUPS[g1], 3) + r.sample(GROUPS[g2], 3)
    r.shuffle(items)
    return f"Sort these into {g1} and {g2}: {', '.join(items)}."


def order_details(r):
    qty, thing = (
        r.randint(2, 40),
        r.choice(_l("folding chairs|boxes of printer paper|bags of coffee|desk plants|lanterns")),
    )
    text = f"Hello, I would like to order {qty} {thing} for our office, delivered to {r.choice(CITIES)} on {_date(r)}. Thanks, {r.choice(NAMES)}"
    return f'From this message, extract the item, quantity, delivery city, date, and customer name:\n"{text}"'


def fact_task(r):
    ask = r.choice(
        [
            "Give three keywords that capture this sentence:",
            "What is the main topic of this sentence?",
            "Turn this sentence into a quiz question with its answer:",
            "Rewrite this sentence for a young child:",
        ]
    )
    return f'{ask}\n"{r.choice(FACTS)}"'
