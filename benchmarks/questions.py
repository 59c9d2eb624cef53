"""Questions with mechanically checkable answers, and the matcher that judges the model's answers.

Used only offline (`make calibrate`, the quality benchmark): the fact tables here never reach the
serving path, whose signals are generic. Ten kinds, built deterministically from the tables below
and seeded generators; each question has one expected answer (with aliases) and a judge:

- numbers (arithmetic, squares and roots, unit conversions, letter counts): the number the answer
  asserts as its result (after its last "=", "is", "equals", "gives" ...; "40 - 20 = 20" answers
  20) must equal the expected one; with no such statement, a short first sentence ("52.");
- years: the first year in the answer, or for a beginning, an end or a fall, the year of the
  sentence that says it began, ended or fell (a first year said of the opposite event, "built in
  1989" for when the Wall fell, answers nothing); comparisons: the number the answer calls the
  larger or smaller one (repeating "A or B", or subtracting them, picks nothing);
- names (capitals, authors, element symbols, days and months): the expected name (or an alias) must
  be in the answer as whole words; "who wrote" takes the name after the answer's last "written
  by"; for days/months the first such name not in the question counts.

The rules are checked against real answers labelled by reading them
(tests/data/labelled_answers.jsonl, tests/test_questions.py).

Split by question: a hash of the id puts 60 % in `fit`, 40 % in `test`; the whole HELD_OUT kind is
kept out of the fit to show the calibration generalises to a kind it never saw.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import asdict, dataclass, field

from deployments.canary import normalise  # the canary judges its answers the same way

HELD_OUT = "authors"

# Other accepted spellings of a capital.
CAPITAL_ALIASES = {
    "Bern": ["Berne"], "Kyiv": ["Kiev"], "Sanaa": ["Sana'a"], "Ulaanbaatar": ["Ulan Bator"],
    "Sucre": ["La Paz"], "Naypyidaw": ["Nay Pyi Taw"], "Belgrade": ["Belgrad"],
}

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "United Kingdom": "London", "Ireland": "Dublin", "Belgium": "Brussels",
    "Netherlands": "Amsterdam", "Switzerland": "Bern", "Austria": "Vienna", "Poland": "Warsaw",
    "Czech Republic": "Prague", "Hungary": "Budapest", "Greece": "Athens", "Sweden": "Stockholm",
    "Norway": "Oslo", "Denmark": "Copenhagen", "Finland": "Helsinki", "Iceland": "Reykjavik",
    "Russia": "Moscow", "Ukraine": "Kyiv", "Romania": "Bucharest", "Bulgaria": "Sofia",
    "Serbia": "Belgrade", "Croatia": "Zagreb", "Slovakia": "Bratislava", "Slovenia": "Ljubljana",
    "Estonia": "Tallinn", "Latvia": "Riga", "Lithuania": "Vilnius", "Belarus": "Minsk",
    "Turkey": "Ankara", "Egypt": "Cairo", "Morocco": "Rabat", "Algeria": "Algiers",
    "Tunisia": "Tunis", "Libya": "Tripoli", "Nigeria": "Abuja", "Ghana": "Accra", "Kenya": "Nairobi",
    "Ethiopia": "Addis Ababa", "Tanzania": "Dodoma", "Uganda": "Kampala", "Rwanda": "Kigali",
    "Senegal": "Dakar", "Mali": "Bamako", "Angola": "Luanda", "Zambia": "Lusaka",
    "Zimbabwe": "Harare", "Sudan": "Khartoum", "Somalia": "Mogadishu", "Madagascar": "Antananarivo",
    "Cameroon": "Yaounde", "China": "Beijing", "Japan": "Tokyo", "South Korea": "Seoul",
    "North Korea": "Pyongyang", "India": "New Delhi", "Pakistan": "Islamabad",
    "Bangladesh": "Dhaka", "Nepal": "Kathmandu", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Indonesia": "Jakarta", "Philippines": "Manila", "Malaysia": "Kuala Lumpur",
    "Cambodia": "Phnom Penh", "Laos": "Vientiane", "Myanmar": "Naypyidaw", "Mongolia": "Ulaanbaatar",
    "Afghanistan": "Kabul", "Iran": "Tehran", "Iraq": "Baghdad", "Syria": "Damascus",
    "Jordan": "Amman", "Lebanon": "Beirut", "Saudi Arabia": "Riyadh",
    "Qatar": "Doha", "Oman": "Muscat", "Yemen": "Sanaa", "United Arab Emirates": "Abu Dhabi",
    "Kazakhstan": "Astana", "Uzbekistan": "Tashkent", "Georgia": "Tbilisi", "Armenia": "Yerevan",
    "Azerbaijan": "Baku", "Australia": "Canberra", "New Zealand": "Wellington", "Fiji": "Suva",
    "Canada": "Ottawa", "United States": "Washington", "Cuba": "Havana", "Jamaica": "Kingston",
    "Haiti": "Port-au-Prince", "Honduras": "Tegucigalpa", "Nicaragua": "Managua",
    "Costa Rica": "San Jose", "El Salvador": "San Salvador", "Colombia": "Bogota",
    "Venezuela": "Caracas", "Ecuador": "Quito", "Peru": "Lima", "Bolivia": "Sucre",
    "Chile": "Santiago", "Argentina": "Buenos Aires", "Uruguay": "Montevideo",
    "Paraguay": "Asuncion", "Brazil": "Brasilia", "Sri Lanka": "Colombo", "Bhutan": "Thimphu",
}

# Element symbols that read as English words ("I", "As", "In", "Be") are left out: the matcher
# could not tell the symbol from the word.
ELEMENTS = {
    "hydrogen": "H", "helium": "He", "lithium": "Li", "boron": "B", "carbon": "C",
    "nitrogen": "N", "oxygen": "O", "fluorine": "F", "neon": "Ne", "sodium": "Na",
    "magnesium": "Mg", "aluminium": "Al", "silicon": "Si", "phosphorus": "P", "sulfur": "S",
    "chlorine": "Cl", "argon": "Ar", "potassium": "K", "calcium": "Ca", "titanium": "Ti",
    "chromium": "Cr", "manganese": "Mn", "iron": "Fe", "cobalt": "Co", "nickel": "Ni",
    "copper": "Cu", "zinc": "Zn", "gallium": "Ga", "germanium": "Ge", "selenium": "Se",
    "bromine": "Br", "krypton": "Kr", "rubidium": "Rb", "strontium": "Sr", "zirconium": "Zr",
    "silver": "Ag", "cadmium": "Cd", "tin": "Sn", "antimony": "Sb", "xenon": "Xe",
    "cesium": "Cs", "barium": "Ba", "tungsten": "W", "platinum": "Pt", "gold": "Au",
    "mercury": "Hg", "lead": "Pb", "bismuth": "Bi", "radon": "Rn", "radium": "Ra",
    "uranium": "U", "plutonium": "Pu", "vanadium": "V", "scandium": "Sc", "lanthanum": "La",
    "iridium": "Ir", "osmium": "Os", "palladium": "Pd", "thorium": "Th", "polonium": "Po",
}

AUTHORS = {
    "Pride and Prejudice": ("Jane Austen", "Austen"), "Emma": ("Jane Austen", "Austen"),
    "Hamlet": ("William Shakespeare", "Shakespeare"),
    "Macbeth": ("William Shakespeare", "Shakespeare"),
    "Romeo and Juliet": ("William Shakespeare", "Shakespeare"),
    "1984": ("George Orwell", "Orwell"), "Animal Farm": ("George Orwell", "Orwell"),
    "War and Peace": ("Leo Tolstoy", "Tolstoy"), "Anna Karenina": ("Leo Tolstoy", "Tolstoy"),
    "Crime and Punishment": ("Fyodor Dostoevsky", "Dostoevsky"),
    "The Brothers Karamazov": ("Fyodor Dostoevsky", "Dostoevsky"),
    "Don Quixote": ("Miguel de Cervantes", "Cervantes"),
    "Moby-Dick": ("Herman Melville", "Melville"),
    "The Great Gatsby": ("F. Scott Fitzgerald", "Fitzgerald"),
    "To Kill a Mockingbird": ("Harper Lee", "Harper Lee"),
    "The Catcher in the Rye": ("J. D. Salinger", "Salinger"),
    "Oliver Twist": ("Charles Dickens", "Dickens"),
    "A Tale of Two Cities": ("Charles Dickens", "Dickens"),
    "Great Expectations": ("Charles Dickens", "Dickens"),
    "The Adventures of Tom Sawyer": ("Mark Twain", "Twain"),
    "Adventures of Huckleberry Finn": ("Mark Twain", "Twain"),
    "Frankenstein": ("Mary Shelley", "Shelley"), "Dracula": ("Bram Stoker", "Stoker"),
    "Jane Eyre": ("Charlotte Bronte", "Bronte"), "Wuthering Heights": ("Emily Bronte", "Bronte"),
    "The Hobbit": ("J. R. R. Tolkien", "Tolkien"),
    "The Lord of the Rings": ("J. R. R. Tolkien", "Tolkien"),
    "Harry Potter and the Philosopher's Stone": ("J. K. Rowling", "Rowling"),
    "The Old Man and the Sea": ("Ernest Hemingway", "Hemingway"),
    "A Farewell to Arms": ("Ernest Hemingway", "Hemingway"),
    "The Odyssey": ("Homer", "Homer"), "The Iliad": ("Homer", "Homer"),
    "The Divine Comedy": ("Dante Alighieri", "Dante"),
    "One Hundred Years of Solitude": ("Gabriel Garcia Marquez", "Marquez"),
    "The Grapes of Wrath": ("John Steinbeck", "Steinbeck"),
    "Of Mice and Men": ("John Steinbeck", "Steinbeck"),
    "Brave New World": ("Aldous Huxley", "Huxley"),
    "Fahrenheit 451": ("Ray Bradbury", "Bradbury"),
    "The Picture of Dorian Gray": ("Oscar Wilde", "Wilde"),
    "Alice's Adventures in Wonderland": ("Lewis Carroll", "Carroll"),
    "The Time Machine": ("H. G. Wells", "Wells"), "The War of the Worlds": ("H. G. Wells", "Wells"),
    "Les Miserables": ("Victor Hugo", "Hugo"),
    "The Hunchback of Notre-Dame": ("Victor Hugo", "Hugo"),
    "The Count of Monte Cristo": ("Alexandre Dumas", "Dumas"),
    "The Three Musketeers": ("Alexandre Dumas", "Dumas"),
    "Madame Bovary": ("Gustave Flaubert", "Flaubert"),
    "The Metamorphosis": ("Franz Kafka", "Kafka"), "The Trial": ("Franz Kafka", "Kafka"),
    "Lolita": ("Vladimir Nabokov", "Nabokov"), "Ulysses": ("James Joyce", "Joyce"),
    "Treasure Island": ("Robert Louis Stevenson", "Stevenson"),
    "The Jungle Book": ("Rudyard Kipling", "Kipling"),
    "Gulliver's Travels": ("Jonathan Swift", "Swift"),
    "Robinson Crusoe": ("Daniel Defoe", "Defoe"),
    "The Origin of Species": ("Charles Darwin", "Darwin"),
    "The Communist Manifesto": ("Karl Marx", "Marx"),
    "The Little Prince": ("Antoine de Saint-Exupery", "Saint-Exupery"),
    "Charlie and the Chocolate Factory": ("Roald Dahl", "Dahl"),
    "The Road": ("Cormac McCarthy", "McCarthy"),
}

YEARS = {
    "did World War II end": 1945, "did World War I begin": 1914, "did World War I end": 1918,
    "did World War II begin": 1939, "did the Berlin Wall fall": 1989,
    "did humans first land on the Moon": 1969, "did Christopher Columbus first reach the Americas": 1492,
    "was the United States Declaration of Independence signed": 1776,
    "did the French Revolution begin": 1789, "did the Titanic sink": 1912,
    "did the Soviet Union dissolve": 1991, "was the Battle of Hastings fought": 1066,
    "was the Magna Carta signed": 1215, "did the American Civil War end": 1865,
    "did the American Civil War begin": 1861, "was Abraham Lincoln assassinated": 1865,
    "was John F. Kennedy assassinated": 1963, "did the attack on Pearl Harbor happen": 1941,
    "did the September 11 attacks happen": 2001, "did Nelson Mandela become president of South Africa": 1994,
    "did India gain independence from Britain": 1947, "was the People's Republic of China founded": 1949,
    "did the Wright brothers make their first powered flight": 1903,
    "did the stock market crash that began the Great Depression happen": 1929,
    "was the euro introduced as a currency": 1999, "did Germany reunify": 1990,
    "did Napoleon lose the Battle of Waterloo": 1815, "was the Eiffel Tower completed": 1889,
    "did the Chernobyl disaster happen": 1986, "was Sputnik launched": 1957,
    "did Yuri Gagarin fly into space": 1961, "did the Russian Revolution happen": 1917,
    "was the first iPhone released": 2007, "was the World Wide Web invented": 1989,
    "did Martin Luther post his Ninety-five Theses": 1517, "did the Great Fire of London happen": 1666,
    "did Queen Victoria begin her reign": 1837, "did the Spanish Armada sail against England": 1588,
    "did the Boston Tea Party happen": 1773, "was the United Nations founded": 1945,
    "was the Panama Canal opened": 1914, "did the Cuban Missile Crisis happen": 1962,
    "did Barack Obama become president of the United States": 2009,
    "did the Hubble Space Telescope launch": 1990, "did the Space Shuttle Challenger disaster happen": 1986,
    "was William Shakespeare born": 1564, "was Albert Einstein born": 1879,
    "was Isaac Newton born": 1643, "did Charles Darwin publish On the Origin of Species": 1859,
    "did Neil Armstrong walk on the Moon": 1969, "did the Korean War begin": 1950,
    "did the Vietnam War end": 1975, "did Constantinople fall to the Ottomans": 1453,
    "did the Black Death reach Europe": 1347, "was the printing press invented by Gutenberg": 1440,
    "was Facebook founded": 2004, "was Google founded": 1998, "did the 2008 financial crisis begin": 2008,
    "did Elizabeth II become queen": 1952, "did Apollo 13 launch": 1970,
}

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
            "tenth", "eleventh", "twelfth"]

WORDS = """apple banana cherry garden window pencil orange yellow purple bottle flower summer winter
river mountain forest planet rocket button candle castle dragon engine family guitar hammer island
jacket kitten ladder magnet needle ocean pepper rabbit silver tomato turtle velvet wizard zebra
airport balloon cabinet diamond elephant festival giraffe harvest library monster notebook pyramid
sandwich triangle umbrella vampire blanket chicken dolphin feather holiday lantern mirror parrot
pumpkin sunset teacher village whistle anchor basket circle desert butter cookie spider tiger
bridge camera doctor friend heart lemon music number paper queen school table water yogurt""".split()

# (question template, factor, unit from, unit to)
CONVERSIONS = [
    ("How many meters are in {n} kilometers?", 1000), ("How many centimeters are in {n} meters?", 100),
    ("How many millimeters are in {n} centimeters?", 10), ("How many minutes are in {n} hours?", 60),
    ("How many seconds are in {n} minutes?", 60), ("How many hours are in {n} days?", 24),
    ("How many days are in {n} weeks?", 7), ("How many grams are in {n} kilograms?", 1000),
    ("How many months are in {n} years?", 12), ("How many milliliters are in {n} liters?", 1000),
    ("How many eggs are in {n} dozen?", 12), ("How many years are in {n} decades?", 10),
]


@dataclass
class Question:
    id: str
    kind: str
    prompt: str
    expected: str
    aliases: list[str] = field(default_factory=list)
    judge: str = "name"  # number | year | first_of | name | symbol | first_new_name

    def to_dict(self) -> dict:
        return asdict(self)


def build_questions(seed: int = 12) -> list[Question]:
    rng = random.Random(seed)
    qs: list[Question] = []

    def add(kind: str, prompt: str, expected, judge: str, aliases: list[str] | None = None):
        qs.append(Question(f"{kind}-{len([q for q in qs if q.kind == kind]):03d}", kind, prompt,
                           str(expected), aliases or [], judge))

    seen: set[tuple] = set()
    while len([q for q in qs if q.kind == "arithmetic"]) < 150:
        op = rng.choice("+-*")
        a, b = (rng.randint(2, 99), rng.randint(2, 99)) if op != "*" else (rng.randint(2, 19),
                                                                           rng.randint(2, 12))
        if op == "-" and b > a:
            a, b = b, a
        if (a, op, b) in seen or a == b:
            continue
        seen.add((a, op, b))
        value = a + b if op == "+" else a - b if op == "-" else a * b
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        form = rng.choice([f"What is {a} {word} {b}?", f"What is {a} {op.replace('*', 'x')} {b}?",
                           f"Calculate {a} {word} {b}."])
        add("arithmetic", form, value, "number")
    for n in range(2, 32):
        add("squares", f"What is {n} squared?", n * n, "number")
        add("squares", f"What is the square root of {n * n}?", n, "number")
    for template, factor in CONVERSIONS:
        for n in rng.sample(range(2, 13), 9):
            add("conversions", template.format(n=n), n * factor, "number")
    for country, capital in CAPITALS.items():
        prompt = f"What is the capital of {country}?"
        if normalise(capital) not in normalise(prompt):  # "Mexico City" would match itself
            add("capitals", prompt, capital, "name", CAPITAL_ALIASES.get(capital))
    for element, symbol in ELEMENTS.items():
        add("element_symbols", f"What is the chemical symbol for {element}?", symbol, "symbol")
    for book, (author, surname) in AUTHORS.items():
        add("authors", f"Who wrote {book}?", author, "name", [surname])
    for event, year in YEARS.items():
        add("years", f"In what year {event}?", year, "year")
    for word in WORDS[:100]:
        add("letter_counts", f"How many letters are in the word '{word}'?", len(word), "number")
    for i, day in enumerate(WEEKDAYS):
        add("calendar", f"What day of the week comes after {day}?", WEEKDAYS[(i + 1) % 7], "first_new_name")
        add("calendar", f"What day of the week comes before {day}?", WEEKDAYS[i - 1], "first_new_name")
    for i, month in enumerate(MONTHS):
        add("calendar", f"Which month comes after {month}?", MONTHS[(i + 1) % 12], "first_new_name")
        add("calendar", f"Which month comes before {month}?", MONTHS[i - 1], "first_new_name")
        add("calendar", f"What is the {ORDINALS[i]} month of the year?", month, "first_new_name")
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < 60:
        a, b = rng.sample(range(10, 1000), 2)
        pairs.add((a, b))
    for a, b in sorted(pairs):
        kind = rng.choice(["larger", "smaller"])
        add("comparisons", f"Which number is {kind}, {a} or {b}?",
            max(a, b) if kind == "larger" else min(a, b), "first_of", [str(a), str(b)])
    return qs


def split_of(question: Question) -> str:
    if question.kind == HELD_OUT:
        return "heldout"
    digest = int(hashlib.sha1(question.id.encode()).hexdigest(), 16)
    return "fit" if digest % 10 < 6 else "test"


# ---------------------------------------------------------------------------------------------
# The matcher
# ---------------------------------------------------------------------------------------------

_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split())}
_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?|[a-z]+(?:-[a-z]+)?")


def numbers_in(text: str) -> list[float]:
    """Numbers in reading order, digits ("3,000", "12.5") and words ("nine", "twenty-one")."""
    out: list[float] = []
    for token in _NUM.findall(text.lower()):
        if token[0].isdigit() or (token[0] == "-" and len(token) > 1 and token[1].isdigit()):
            digits = token.replace(",", "").rstrip(".")
            try:
                out.append(float(digits))
            except ValueError:
                continue
            continue
        parts = token.split("-")
        if len(parts) == 2 and parts[0] in _TENS and parts[1] in _NUMBER_WORDS:
            out.append(_TENS[parts[0]] + _NUMBER_WORDS[parts[1]])
        elif token in _NUMBER_WORDS:
            out.append(_NUMBER_WORDS[token])
        elif token in _TENS:
            out.append(_TENS[token])
    return out


def _has_name(answer: str, name: str) -> bool:
    return normalise(name) in normalise(answer)


_WORD_NUMBER = "|".join(sorted([*_NUMBER_WORDS, *_TENS], key=len, reverse=True))
_NUMBER_TOKEN = rf"-?\d[\d,]*(?:\.\d+)?|(?:{_WORD_NUMBER})(?:-(?:{_WORD_NUMBER}))?\b"
# "= 52", "is 52", "equals 52", "gives you 52", "makes 52": the number a sentence asserts.
_ASSERTED = re.compile(
    r"(?:=|\bis equal to\b|\bequal to\b|\bis\b|\bequals?\b|\bgives?(?: you| us)?\b|\bget\b|"
    r"\bmakes?\b|\bresults? in\b|\bcomes? to\b)\s*(?:approximately |about |exactly |just |only )?"
    rf"({_NUMBER_TOKEN})(?!\s*(?:[-+*/x×]\s*\d|times\b|plus\b|minus\b))")
_BARE_ANSWER_WORDS = 8  # "52.", "It's 52 days.": a first sentence this short may be the answer
_FIRST_SENTENCE = re.compile(r"^.*?(?:[.!?](?:\s|$)|\n|$)", re.S)
_LARGER = ("larger", "largest", "bigger", "biggest", "greater", "greatest", "higher", "more")
_SMALLER = ("smaller", "smallest", "lesser", "least", "lower", "less")
_DIRECTION = "|".join(_LARGER + _SMALLER)


def asserted_number(answer: str, question: str) -> float | None:
    """The number the answer gives as its result: the one after its last "=", "is", "equals",
    "gives" ... (so "40 - 20 = 20" answers 20, and "is 12 ... which gives you 32" answers 32);
    a number that starts an expression ("is 3 * 180") is not a result. With no such statement, the
    last new number of a short first sentence (a bare "52.")."""
    stated = [n for token in _ASSERTED.findall(answer.lower()) for n in numbers_in(token)]
    if stated:
        return stated[-1]
    given = set(numbers_in(question))
    first = _FIRST_SENTENCE.match(answer.strip()).group(0)
    if len(first.split()) > _BARE_ANSWER_WORDS:  # talk around numbers is not an answer
        return None
    new = [n for n in numbers_in(first) if n not in given]
    return new[-1] if new else None


def picked_of_two(answer: str, question: str, candidates: list[str]) -> float | None:
    """Which of a comparison's two numbers the answer picks: one said to be larger or smaller
    ("907 is larger", "the smaller number is 56", "56 ... is the smallest"); None when it picks
    neither (it only repeats "A or B", subtracts, or talks of something else)."""
    a, b = (float(c) for c in candidates)
    wants_larger = any(w in question.lower() for w in _LARGER)
    text = answer.lower().replace(",", "")
    num = r"(-?\d+(?:\.\d+)?)"
    said = re.findall(rf"\bthe answer is\s+{num}(?!\s*[-+*/x])", text)
    if said:  # its stated answer decides, a candidate or not
        value = float(said[-1])
        return value if value in (a, b) else None
    picks = []
    for m in re.finditer(rf"{num}\)?\s+(?:\w+\s+){{0,3}}?(?:is|was|would be)\s+(?:the\s+|a\s+)?"
                         rf"({_DIRECTION})\b", text):
        picks.append((float(m.group(1)), m.group(2)))
    for m in re.finditer(rf"\b({_DIRECTION})\s+(?:number\s+|one\s+|of the two\s+)?(?:is|would be)"
                         rf"\s+{num}", text):
        picks.append((float(m.group(2)), m.group(1)))
    for value, word in picks:
        if value not in (a, b):
            continue
        says_larger = word in _LARGER
        return value if says_larger == wants_larger else (b if value == a else a)
    return None


def author_span(answer: str) -> str | None:
    """What follows the answer's last "written by", up to its clause's end: the author it names
    ("by George Orwell ... written by A.B. Milne" names Milne)."""
    found = list(re.finditer(r"\bwritten by\b", answer, re.I))
    if not found:
        return None
    rest = answer[found[-1].end():]
    return re.split(r"\bwho\b|\bwhich\b|\band\b|[.;\n]", rest, maxsplit=1)[0]


def judge(question: Question, answer: str) -> bool:
    """True when the answer states the expected answer (see the module docstring for the rules)."""
    expected = question.expected
    if question.judge == "number":
        return asserted_number(answer, question.prompt) == float(expected)
    if question.judge == "year":
        years = [n for n in numbers_in(answer) if 100 <= n <= 2100 and n == int(n)]
        at = _event_year(answer, question.prompt, years) if years else None
        return at is not None and years[at] == float(expected)
    if question.judge == "first_of":
        return picked_of_two(answer, question.prompt, question.aliases) == float(expected)
    if question.judge == "symbol":
        return re.search(rf"(?<![A-Za-z]){re.escape(expected)}(?![a-z])", answer) is not None
    if question.judge == "first_new_name":
        names = WEEKDAYS + MONTHS
        asked = {n for n in names if _has_name(question.prompt, n)}
        text = normalise(answer)
        found = sorted((text.find(normalise(n)), n) for n in names
                       if n not in asked and normalise(n) in text)
        return bool(found) and found[0][1] == expected
    names = [expected, *question.aliases]
    if re.match(r"\s*who wrote\b", question.prompt, re.I):
        span = author_span(answer)
        if span is not None:
            return any(_has_name(span, name) for name in names)
    return any(_has_name(answer, name) for name in names)


# The question's event verb, and the forms an answer may use for it.
_VERB_FORMS = {
    "begin": ("begin", "began", "begun", "beginning", "start", "started", "broke out"),
    "end": ("end", "ended", "ending", "concluded", "came to an end"),
    "fall": ("fall", "fell", "fallen", "came down", "torn down", "collapsed", "brought down"),
}
_MAKING = ("built", "erected", "constructed", "founded", "established", "put up")
# Forms that say the opposite event happened in a year: that year is not the answer.
_OPPOSITE_FORMS = {"begin": _VERB_FORMS["end"], "end": _VERB_FORMS["begin"] + _MAKING,
                   "fall": _VERB_FORMS["begin"] + _MAKING}


def _event_year(answer: str, question: str, years: list[float]) -> int | None:
    """Which of the answer's years it gives for the event asked: for a question about when
    something began, ended or fell, the first year in a sentence that says so ("1945 marked the
    end ... which began on September 1st, 1939" gives 1939 for the beginning); else the first,
    unless its sentence says the opposite happened then ("the Wall was built in 1989" does not
    say when it fell: None)."""
    verb = next((v for v in _VERB_FORMS if re.search(rf"\b{v}\b", question, re.I)), None)
    if verb is None:
        return 0
    parts = re.split(r"(?<=[.;])\s+|,\s*(?:which|and|but)\b", answer)
    for part in parts:
        if _says(part, _VERB_FORMS[verb]):
            here = [n for n in numbers_in(part) if 100 <= n <= 2100 and n == int(n)]
            if here:
                return years.index(here[0])
    first = next((p for p in parts
                  if any(100 <= n <= 2100 and n == int(n) for n in numbers_in(p))), answer)
    return None if _says(first, _OPPOSITE_FORMS[verb]) else 0


def _says(text: str, forms: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{f}\b", text, re.I) for f in forms)
