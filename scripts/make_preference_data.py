"""Write examples/datasets/preference/{train,valid,test}.jsonl: preference pairs for DPO and its kin on a real model.

Each prompt is a short factual question followed by an instruction on the form of the answer: answer in capital letters,
answer in one word, or end the answer with the word "Over.". The chosen response follows the instruction; the rejected
response is the same plain sentence an instruct model gives when it ignores it (SmolLM2-135M-Instruct does). Both say the
same thing, so the only preference to learn is the instruction's. The held-out sets ask about subjects that never occur
in training. Rows are `{"prompt", "chosen", "rejected"}`; deterministic (seeded)."""
import json, random
from pathlib import Path

CAPITALS = """France Paris|Japan Tokyo|Italy Rome|Spain Madrid|Egypt Cairo|Kenya Nairobi|Peru Lima|Norway Oslo|Greece Athens|
Cuba Havana|Chile Santiago|Poland Warsaw|Ireland Dublin|Austria Vienna|Portugal Lisbon|Sweden Stockholm|Finland Helsinki|
Hungary Budapest|Thailand Bangkok|Vietnam Hanoi|Ghana Accra|Nepal Kathmandu|Iceland Reykjavik|Denmark Copenhagen|
Belgium Brussels|Turkey Ankara|Russia Moscow|China Beijing|India Delhi|Canada Ottawa|Mexico Mexico City|Argentina Buenos Aires"""
COLORS = """a banana yellow|grass green|the sky blue|snow white|coal black|a strawberry red|an orange orange|a lemon yellow|
a carrot orange|milk white|a tomato red|a frog green|a plum purple|chocolate brown|a lime green|blood red|an eggplant purple|
a pumpkin orange|a crow black|a cloud white"""
SOUNDS = """a cow moo|a dog woof|a cat meow|a duck quack|a sheep baa|a pig oink|an owl hoot|a horse neigh|a lion roar|
a snake hiss|a bee buzz|a mouse squeak|a rooster crow|a goat bleat|a frog croak|a donkey bray"""
OPPOSITES = """hot cold|big small|up down|fast slow|happy sad|light dark|open closed|early late|full empty|hard soft|
old young|high low|wet dry|loud quiet|rich poor|thick thin|strong weak|near far|clean dirty|heavy light|long short|
easy difficult|first last|inside outside|push pull"""
PLURALS = """mouse mice|child children|foot feet|tooth teeth|goose geese|man men|woman women|person people|ox oxen|
leaf leaves|knife knives|wolf wolves|cactus cacti|fish fish|sheep sheep|deer deer|life lives|half halves"""


def facts():
    "(question, plain answer sentence, one-word answer) for every fact."
    out = []
    for line in CAPITALS.replace("\n", "").split("|"):
        country, city = line.strip().split(" ", 1)
        out.append((f"What is the capital of {country}?", f"The capital of {country} is {city}.", city))
    for line in COLORS.replace("\n", "").split("|"):
        *thing, color = line.strip().split()
        thing = " ".join(thing)
        out.append((f"What color is {thing}?", f"{thing[0].upper() + thing[1:]} is {color}.", color.capitalize()))
    for line in SOUNDS.replace("\n", "").split("|"):
        a, animal, sound = line.strip().split()
        out.append((f"What sound does {a} {animal} make?", f"{a.capitalize()} {animal} says {sound}.", sound.capitalize()))
    for line in OPPOSITES.replace("\n", "").split("|"):
        w, o = line.strip().split()
        out.append((f"What is the opposite of {w}?", f"The opposite of {w} is {o}.", o.capitalize()))
    for line in PLURALS.replace("\n", "").split("|"):
        w, p = line.strip().split()
        out.append((f"What is the plural of {w}?", f"The plural of {w} is {p}.", p.capitalize()))
    return out


INSTRUCTIONS = {  # the instruction, and the answer that follows it
    "caps": ("Answer in capital letters only.", lambda plain, word: plain.upper()),
    "word": ("Answer in one word.", lambda plain, word: f"{word}."),
    "over": ("End your answer with the word 'Over.'", lambda plain, word: f"{plain} Over."),
}


def follows(kind:str, answer:str) -> bool:
    "Whether `answer` follows instruction `kind` (what the tests and the tutorial check generations with)."
    a = answer.strip()
    if kind == "caps": return any(c.isalpha() for c in a) and a == a.upper()
    if kind == "word": return len(a.rstrip(".!").split()) == 1
    return "Over." in a  # generations often repeat it; the chosen answers end with it once


def rows(fs, rng):
    "One pair per fact, the instruction kinds taking turns."
    out = []
    for i, (q, plain, word) in enumerate(fs):
        kind = list(INSTRUCTIONS)[i % len(INSTRUCTIONS)]
        text, make = INSTRUCTIONS[kind]
        out.append({"prompt": f"{q} {text}", "chosen": make(plain, word), "rejected": plain, "kind": kind})
    rng.shuffle(out)
    return out


def main(out=Path(__file__).resolve().parent.parent/"examples"/"datasets"/"preference", seed=0):
    rng = random.Random(seed)
    fs = facts()
    rng.shuffle(fs)
    n_valid, n_test = 24, 12  # held-out subjects: never asked about in training
    parts = {"valid": fs[:n_valid], "test": fs[n_valid:n_valid + n_test], "train": fs[n_valid + n_test:]}
    out.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        rs = rows(part, rng)
        for r in rs: assert follows(r["kind"], r["chosen"]) and not follows(r["kind"], r["rejected"]), r
        (out/f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs), encoding="utf-8")
        print(f"{name}: {len(rs)} pairs -> {out/name}.jsonl")


if __name__ == "__main__": main()
