"""Builds the labelled calibration set for the quality score: `python tests/data/make_calibration.py`.

40 hand-written question/answer pairs; each gives one good answer (label 1) and five bad ones
(label 0): off-topic (another question's answer), a repetition loop, truncated mid-sentence with
finish_reason "length", empty, and gibberish. 240 pairs, deterministic (seeded).
"""

import json
import random
from pathlib import Path

QA = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide from the air and use it in photosynthesis."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    ("What is the boiling point of water at sea level?", "At sea level, water boils at 100 degrees Celsius."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("How do I reverse a list in Python?", "Use my_list.reverse() to reverse it in place, or my_list[::-1] to get a reversed copy."),
    ("What does DNA stand for?", "DNA stands for deoxyribonucleic acid."),
    ("Why is the sky blue?", "Sunlight is scattered by the air, and blue light scatters more than red, so the sky looks blue."),
    ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit."),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest ocean on Earth."),
    ("What is photosynthesis?", "Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("Who painted the Mona Lisa?", "The Mona Lisa was painted by Leonardo da Vinci."),
    ("What is the speed of light?", "Light travels at about 299,792 kilometres per second in a vacuum."),
    ("How do vaccines work?", "Vaccines train the immune system to recognise a germ, so the body can fight it off quickly later."),
    ("What is the tallest mountain in the world?", "Mount Everest is the tallest mountain above sea level, at about 8,849 metres."),
    ("What language is spoken in Brazil?", "The official language of Brazil is Portuguese."),
    ("What is an HTTP 404 error?", "An HTTP 404 error means the server could not find the requested page."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the main ingredient in guacamole?", "The main ingredient in guacamole is avocado."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet because of the iron oxide on its surface."),
    ("What is the currency of Japan?", "The currency of Japan is the yen."),
    ("How do bees make honey?", "Bees collect nectar from flowers, store it in the hive and evaporate its water until it becomes honey."),
    ("What is the function of the heart?", "The heart pumps blood through the body, carrying oxygen and nutrients to the organs."),
    ("What is a prime number?", "A prime number is a whole number greater than 1 whose only divisors are 1 and itself."),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong was the first person to walk on the Moon, in 1969."),
    ("What causes tides?", "Tides are caused mainly by the gravitational pull of the Moon on the Earth's oceans."),
    ("How do I make a cup of tea?", "Boil water, pour it over a tea bag in a cup, steep for three to five minutes, then remove the bag."),
    ("What is the largest mammal?", "The blue whale is the largest mammal on Earth."),
    ("What is the difference between weather and climate?", "Weather is the short-term state of the atmosphere; climate is the average weather over many years."),
    ("What does a CPU do?", "A CPU executes the instructions of computer programs, doing the arithmetic and logic."),
    ("Why do we need sleep?", "Sleep lets the body and brain recover, consolidate memories and regulate hormones."),
    ("What is the capital of Japan?", "Tokyo is the capital of Japan."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("What is the primary language used for styling web pages?", "Web pages are styled with CSS, Cascading Style Sheets."),
    ("What do pandas mainly eat?", "Giant pandas eat mostly bamboo."),
]

WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()


def build(seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i, (question, answer) in enumerate(QA):
        other = QA[(i + 1 + rng.randrange(len(QA) - 1)) % len(QA)][1]
        words = answer.split()
        cut = " ".join(words[: max(2, len(words) // 2)]).rstrip(".,")
        phrase = " ".join(words[: min(4, len(words))])
        gibberish = " ".join(
            "".join(rng.choice("qwrtzpsdfghjklxcvbnm") for _ in range(rng.randint(3, 9)))
            for _ in range(12)
        )
        rows += [
            {"prompt": question, "answer": answer, "finish_reason": "stop", "label": 1, "kind": "good"},
            {"prompt": question, "answer": other, "finish_reason": "stop", "label": 0, "kind": "off_topic"},
            {"prompt": question, "answer": (phrase + " ") * 10, "finish_reason": "length", "label": 0,
             "kind": "repetition"},
            {"prompt": question, "answer": cut, "finish_reason": "length", "label": 0, "kind": "truncated"},
            {"prompt": question, "answer": "", "finish_reason": "stop", "label": 0, "kind": "empty"},
            {"prompt": question, "answer": rng.choice([gibberish, " ".join(rng.choices(WORDS, k=14)) + "."]),
             "finish_reason": "stop", "label": 0, "kind": "gibberish"},
        ]
    return rows


if __name__ == "__main__":
    out = Path(__file__).with_name("calibration.jsonl")
    rows = build()
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} pairs to {out}")
