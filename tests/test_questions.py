"""The question set and its matcher (offline only: never on the serving path)."""

import json
from collections import Counter
from pathlib import Path

from benchmarks.questions import Question, build_questions, judge, numbers_in, split_of


LABELLED = Path(__file__).parent / "data" / "labelled_answers.jsonl"


def q(kind: str, prompt: str, expected: str, judge_: str, aliases=None) -> Question:
    return Question("x-000", kind, prompt, expected, aliases or [], judge_)


def test_set_size_kinds_and_split_are_fixed():
    qs = build_questions()
    assert len(qs) >= 800 and len({x.kind for x in qs}) >= 8
    assert len({x.id for x in qs}) == len(qs) and len({x.prompt for x in qs}) == len(qs)
    assert [x.to_dict() for x in qs] == [x.to_dict() for x in build_questions()]  # deterministic
    splits = Counter(split_of(x) for x in qs)
    assert splits["fit"] > splits["test"] > 0 and splits["heldout"] > 0


def test_numbers_judge_the_final_new_number():
    add = q("arithmetic", "What is 15 plus 27?", "42", "number")
    assert judge(add, "15 + 27 = 42.") and judge(add, "The answer is forty-two.")
    assert not judge(add, "15 + 27 = 32.") and not judge(add, "I cannot say.")
    conv = q("conversions", "How many meters are in 3 kilometers?", "3000", "number")
    assert judge(conv, "1 km is 1,000 m, so 3 km is 3,000 meters.")
    assert not judge(conv, "3 kilometers is 300 meters.")
    assert numbers_in("twenty-one, 3,000.5 and 7.") == [21, 3000.5, 7]


def test_names_years_and_choices():
    cap = q("capitals", "What is the capital of Australia?", "Canberra", "name")
    assert judge(cap, "The capital of Australia is Canberra.")
    assert not judge(cap, "The capital of Australia is Sydney.")
    sym = q("element_symbols", "What is the chemical symbol for gold?", "Au", "symbol")
    assert judge(sym, "Gold's symbol is Au.") and not judge(sym, "It is Ag, from argentum.")
    assert not judge(q("e", "symbol for carbon?", "C", "symbol"), "It is Ca.")
    year = q("years", "In what year did World War II end?", "1945", "year")
    assert judge(year, "It ended in 1945, after six years.") and not judge(year, "In 1944.")
    pick = q("comparisons", "Which number is larger, 47 or 74?", "74", "first_of", ["47", "74"])
    assert judge(pick, "74 is larger than 47.") and not judge(pick, "47 is larger than 74.")
    day = q("calendar", "What day of the week comes after Monday?", "Tuesday", "first_new_name")
    assert judge(day, "After Monday comes Tuesday.")
    assert not judge(day, "After Monday comes Wednesday, then Tuesday.")


def test_the_asserted_result_counts_not_a_number_said_along_the_way():
    sub = q("arithmetic", "What is 40 minus 20?", "20", "number")
    assert judge(sub, "The difference between 40 and 20 is 20. So, 40 - 20 = 20.")
    add = q("arithmetic", "What is 55 plus 70?", "125", "number")
    assert judge(add, "55 + 70 = 125. The result is the sum of the two numbers.")
    more = q("arithmetic", "What is 44 - 32?", "12", "number")
    assert not judge(more, "44 - 32 is 12. Then you subtract 12 from 32, which gives you 32.")
    hours = q("conversions", "How many minutes are in 3 hours?", "180", "number")
    assert judge(hours, "3 * 60 = 180 minutes. So, 3 hours is equal to 3 * 180 = ")
    root = q("squares", "What is 10 squared?", "100", "number")
    assert not judge(root, "10 is a number that is often confused with 100 in base-2.")
    assert judge(root, "100.")


def test_a_comparison_must_pick_one_of_the_two_numbers():
    small = q("comparisons", "Which number is smaller, 189 or 770?", "189", "first_of",
              ["189", "770"])
    assert judge(small, "189 is the smaller number.") and judge(small, "The smaller one is 189.")
    assert judge(small, "770 is larger, so 189.")  # the other of the two is named the larger
    assert not judge(small, "189 or 770.")  # repeating the question picks nothing
    assert not judge(small, "189 - 770 = 1.")
    assert not judge(small, "The smaller number is 189. So, the answer is 189 - 770 = 10.")


def test_who_wrote_is_the_author_the_answer_says_wrote_it():
    farm = q("authors", "Who wrote Animal Farm?", "George Orwell", "name", ["Orwell"])
    assert judge(farm, "Animal Farm was written by George Orwell in 1945.")
    assert not judge(farm, "Animal Farm by George Orwell is a novel written by A.B. Milne.")
    gatsby = q("authors", "Who wrote The Great Gatsby?", "F. Scott Fitzgerald", "name",
               ["Fitzgerald"])
    assert not judge(gatsby, "It was actually written by D.H. Lawrence, who knew Fitzgerald.")


def test_a_year_for_a_beginning_is_the_year_the_answer_says_it_began():
    began = q("years", "In what year did World War II begin?", "1939", "year")
    assert judge(began, "1945 marked the end of the war, which began on September 1st, 1939.")
    assert not judge(began, "World War II began in 1941 and ended in 1945.")


# Hand-read answers the matcher still gets wrong, and why (a fix or a new miss fails the test).
KNOWN_MISSES: dict[str, str] = {}


def test_the_matcher_agrees_with_the_hand_read_answers():
    """tests/data/labelled_answers.jsonl: real answers of the served model, labelled by reading."""
    questions = {x.id: x for x in build_questions()}
    rows = [json.loads(line) for line in LABELLED.read_text().splitlines()]
    assert len(rows) >= 120 and len({r["kind"] for r in rows}) == 10
    misses = {r["id"] for r in rows if judge(questions[r["id"]], r["answer"]) != r["right"]}
    assert misses == set(KNOWN_MISSES), misses ^ set(KNOWN_MISSES)
