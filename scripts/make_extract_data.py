"""Write examples/datasets/extract/{train,valid,test}.jsonl: the quickstart's task for a real model.

The task: read one sentence about a person and answer with strict JSON, exactly `{"name": "...", "age": N, "city": "..."}`
(those keys in that order, the age a number). An instruct model does not answer in that form out of the box; a short
LoRA run teaches it. Sentences come from many phrasings; the held-out sets use first names, surnames and cities that
never occur in training, so a right answer there is extraction learned, not a remembered person. Deterministic (seeded)."""
import json, random
from pathlib import Path

FIRST = """Maria Kenji Omar Anna Lucas Priya Tomasz Chloe Mateo Aisha Jonas Sofia Diego Hana Felix Amara Ivan Leila Noah Elena
Rafael Yuki Samuel Ingrid Marco Zara Oliver Nadia Hugo Mei Arjun Clara Emil Fatima Leo Sara Viktor Grace Pablo Alina
Tariq Julia Henrik Rosa Kofi Lena Dmitri Maya Andre Ines Bruno Keiko Adrian Lucia Malik Eva Stefan Nora Caleb Irene
Akira Beatriz Carlos Dalia Erik Farah Gustav Helga Ismael Jana Karim Lotte Mikhail Nina Osman Paula Quentin Rania
Sven Tamara Umar Vera Wendell Ximena Yusuf Zofia Anders Bianca Cyrus Daria Emeka Freya Goran Hiroshi Ilse Joaquin
Katya Lars Mirela Nikolai Olga Pedro Rhea Soren Talia Ulrich Valentina Wiktor Yara Zeynep Agnes Boris Camila Dario
Esther Fabio Gemma Hamid Ivo Jasmin Kasper Liliana Mustafa Nadine Oskar Petra Ramon Selma Teodor Ugo Wanda""".split()
LAST = """Lopez Sato Haddad Novak Silva Sharma Kowalski Martin Garcia Bello Berg Rossi Fernandez Kim Wagner Okafor Petrov
Rahimi Cohen Ivanova Costa Tanaka Adeyemi Larsen Bianchi Khan Walsh Haddou Moreau Chen Patel Dubois Nilsson Hassan
Romano Andersen Jensen Dimitrov Nakamura Mensah Schmidt Volkov Ortiz Lindqvist Yilmaz Santos Horvat Mendes Keller
Abbott Baranov Carvalho Dahl Eriksen Fischer Gallo Hoffmann Iglesias Jovanovic Kaur Lehmann Marino Nowak Oyelaran
Pereira Quint Reyes Sandoval Toivonen Ueda Vasquez Weber Xu Yamamoto Zielinski Almeida Brandt Castillo Delgado
Engel Ferrari Gomez Holm Ibrahim Jakobsen Kuznetsov Lund Moretti Navarro Olsen Popescu Quiroga Richter Suzuki
Torres Vogel Wolff Yadav Zhang Aziz Bauer Conti Duarte Eklund Fonseca Gruber Hughes Ivanov Jaramillo""".split()
CITY = """Lisbon Osaka Cairo Oslo Toronto Mumbai Krakow Lyon Bogota Lagos Bergen Turin Seville Busan Vienna Accra Kazan
Tehran Haifa Riga Porto Kyoto Ibadan Aarhus Milan Lahore Dublin Tunis Nantes Shanghai Pune Quebec Uppsala Alexandria
Naples Odense Malmo Sofia Nagoya Kumasi Munich Minsk Cusco Gothenburg Izmir Recife Zagreb Braga Zurich Denver
Ankara Bordeaux Chennai Dresden Edinburgh Florence Geneva Hamburg Istanbul Jakarta Karachi Leipzig Madrid Nairobi
Oaxaca Prague Quito Rotterdam Santiago Tallinn Utrecht Valencia Warsaw Yokohama Antwerp Bilbao Calgary Durban
Fukuoka Glasgow Hanoi Innsbruck Jaipur Kiev Lima Marseille Nicosia Ottawa Perth Rabat Salzburg Tbilisi Vilnius""".split()

TEMPLATES = [
    "{name}, {age}, lives in {city}.",
    "{name} is {age} years old and lives in {city}.",
    "At {age}, {name} moved to {city}.",
    "The new tenant in {city} is {name}, aged {age}.",
    "{name} ({age}) was born and raised in {city}.",
    "Meet {name}: {age} years old, based in {city}.",
    "In {city}, {name} celebrated turning {age} last week.",
    "{name} from {city} turned {age} this spring.",
    "Our customer {name}, age {age}, ships to {city}.",
    "Registered: {name}; age {age}; city {city}.",
    "{name} has lived in {city} since before turning {age}, which was this year.",
    "A {age}-year-old named {name} runs a bakery in {city}.",
]
PROMPT = "Extract name, age and city as JSON: {sentence}"


def row(rng, firsts, lasts, cities):
    name, age, city = f"{rng.choice(firsts)} {rng.choice(lasts)}", rng.randint(18, 89), rng.choice(cities)
    sentence = rng.choice(TEMPLATES).format(name=name, age=age, city=city)
    answer = json.dumps({"name": name, "age": age, "city": city})
    return {"messages": [{"role": "user", "content": PROMPT.format(sentence=sentence)}, {"role": "assistant", "content": answer}]}


def main(out=Path(__file__).resolve().parent.parent/"examples"/"datasets"/"extract", n_train=800, n_valid=50, n_test=100, seed=0):
    rng = random.Random(seed)
    cut = lambda xs, k: (xs[:-k], xs[-k:])  # the last k of each list are held out
    (f_tr, f_ho), (l_tr, l_ho), (c_tr, c_ho) = cut(FIRST, 20), cut(LAST, 20), cut(CITY, 15)
    splits = {"train": [row(rng, f_tr, l_tr, c_tr) for _ in range(n_train)],
              "valid": [row(rng, f_ho, l_ho, c_ho) for _ in range(n_valid)],
              "test": [row(rng, f_ho, l_ho, c_ho) for _ in range(n_test)]}
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (out/f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
