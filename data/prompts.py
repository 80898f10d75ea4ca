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

from data import prompt_generators as gen
from data.prompt_slots import SLOTS, _l

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
            gen.order,
            gen.order,
            gen.sequence,
            gen.sequence,
            gen.days,
            gen.clock,
            gen.machines,
            gen.syllogism,
            gen.syllogism,
            gen.all_but,
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
            gen.percent,
            gen.equation,
            gen.change,
            gen.speed,
            gen.area,
            gen.area,
            gen.fractions,
            gen.average,
            gen.marbles,
            gen.recipe,
            gen.divisors,
            gen.prime,
            gen.sale,
            gen.interest,
            gen.ages,
            gen.units,
            gen.arith,
            gen.arith,
            gen.work,
            gen.wage,
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
            gen.sentiment,
            gen.sentiment,
            gen.entities,
            gen.dates,
            gen.to_json,
            gen.table,
            gen.actions,
            gen.contacts,
            gen.sort_groups,
            gen.order_details,
            gen.fact_task,
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
