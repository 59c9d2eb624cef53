"""The question set and its matcher (offline only: never on the serving path)."""

from collections import Counter

from benchmarks.questions import Question, build_questions, judge, numbers_in, split_of


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
