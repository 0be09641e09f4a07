"""Write examples/datasets/quickstart/{train,valid,test}.jsonl: the quickstart's small learnable task.

The task: "swap: A B" -> "B A" for two nouns. The held-out test pairs never appear in training (in either order),
so exact match on them measures a learned rule, not memorised answers. Deterministic (seeded)."""
import json, random
from pathlib import Path

NOUNS = """apple river stone cloud tiger music paper garden window silver forest candle rabbit ocean planet bridge yellow
winter summer dragon pencil castle orange thunder mirror camera island doctor basket jacket rocket flower butter
violin spider meadow kettle lemon harbor falcon tunnel marble cactus wizard anchor button cookie desert engine feather
glacier hammer igloo jungle koala ladder magnet nickel oyster parrot quartz saddle tomato umbrella velvet walrus zebra""".split()


def row(a, b):
    return {"messages": [{"role": "user", "content": f"swap: {a} {b}"}, {"role": "assistant", "content": f"{b} {a}"}]}


def main(out=Path(__file__).resolve().parent.parent/"examples"/"datasets"/"quickstart", n_train=2000, n_valid=100, n_test=100, seed=0):
    rng = random.Random(seed)
    pairs = sorted({tuple(sorted((a, b))) for a in NOUNS for b in NOUNS if a != b})
    rng.shuffle(pairs)
    held, rest = pairs[:n_valid + n_test], pairs[n_valid + n_test:]
    ordered = lambda ps: [p if rng.random() < 0.5 else p[::-1] for p in ps]
    splits = {"test": ordered(held[:n_test]), "valid": ordered(held[n_test:]), "train": ordered(rest)[:n_train]}
    out.mkdir(parents=True, exist_ok=True)
    for name, ps in splits.items():
        (out/f"{name}.jsonl").write_text("".join(json.dumps(row(a, b)) + "\n" for a, b in ps))


if __name__ == "__main__":
    main()
