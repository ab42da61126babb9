#!/usr/bin/env python3
"""Writes varied everyday chat requests for SmolLM2's own-answer training data, over thousands of
topics: the common nouns of WordNet (Debian's `wordnet-base`, /usr/share/wordnet), each asked
about in the shapes that suit its kind (animals, things people make, food, plants, people,
places, feelings, ideas, events, natural processes, substances), with the instruction styles
people add ("in two sentences", "for a child", "as a list"). scripts/make_chat_prompts.py has 88
shapes over a few hundred topics; the feature draft learnt from its answers did not carry to
differently written requests, so this one widens the topics and the wording.

Deterministic for given arguments. Only nouns whose most frequent sense is tagged at least
`MIN_TAGGED` times in WordNet's sense-tagged corpus are used (common words), and none that
appears as a word in the held-out evaluation prompts (examples/prompts/chat24.txt): those
prompts stay unseen in topic as well as in wording.

    .venv/bin/python scripts/make_wordnet_prompts.py OUT_FILE N [HELDOUT_FILE M]

With HELDOUT_FILE, M further requests go there, over topics none of the N uses.
"""

import os
import random
import re
import sys

WORDNET = "/usr/share/wordnet"
MIN_TAGGED = 3

# WordNet's lexicographer files for nouns, grouped into the kinds the shapes below ask about.
KINDS = {
    5: "animal", 6: "artifact", 13: "food", 20: "plant", 18: "person", 15: "place",
    12: "feeling", 7: "idea", 9: "idea", 10: "idea", 4: "activity", 26: "idea", 11: "event",
    28: "event", 19: "process", 22: "process", 27: "substance", 17: "thing", 8: "body",
}

SHAPES = {
    "any": [
        "What is {x}?", "Explain {x} in simple terms.", "Explain {x} to a ten-year-old.",
        "Tell me three interesting facts about {x}.", "Write a short paragraph about {x}.",
        "Summarize what you know about {x} in two sentences.", "Write a haiku about {x}.",
        "Write a four-line poem about {x}.", "List five words that come to mind with {x}.",
        "Why do people care about {x}?", "Give me a fun fact about {x}.",
        "Describe {x} in one sentence.", "What is the history of {x}?",
        "Write a riddle about {x}.", "What are common misconceptions about {x}?",
        "How would you describe {x} to someone who has never heard of it?",
    ],
    "animal": [
        "What does a {x} eat?", "Where does the {x} live?", "How long does a {x} live?",
        "Write a short story about a {x} who {wish}.", "Write a poem about a {adj} {x}.",
        "How does a {x} take care of its young?", "Is a {x} a good pet? Why or why not?",
        "What are the main predators of the {x}?", "Compare the {x} with the {y}.",
        "Give me three surprising facts about the {x}.", "How does a {x} survive the winter?",
        "Write a limerick about a {x}.", "Describe a day in the life of a {x}.",
    ],
    "artifact": [
        "What is a {x} used for?", "Who invented the {x}?", "How do I clean a {x}?",
        "Write a product description for a {adj} {x}.", "Write a riddle whose answer is a {x}.",
        "How is a {x} made?", "What should I look for when buying a {x}?",
        "List five creative uses for an old {x}.", "How has the {x} changed over time?",
        "Write a short story about a {x} that could talk.", "How do I fix a broken {x}?",
        "What is the difference between a {x} and a {y}?",
    ],
    "food": [
        "Give me a simple recipe that uses {x}.", "Is {x} healthy?", "How should I store {x}?",
        "What goes well with {x}?", "Where does {x} come from?", "How do I cook {x}?",
        "Write a short poem about {x}.", "Suggest a breakfast idea with {x}.",
        "What are the nutritional benefits of {x}?", "Compare {x} and {y}.",
        "Plan a dinner menu around {x}.",
    ],
    "plant": [
        "How do I grow {x} at home?", "What does {x} need to grow well?",
        "Where does {x} grow naturally?", "Is {x} safe for pets?", "What is {x} used for?",
        "Write a short poem about {x} in {season}.", "How do I take care of {x}?",
    ],
    "person": [
        "What does a {x} do?", "What skills does a {x} need?",
        "Write a short story about a {x} who {wish}.", "Give me advice for becoming a {x}.",
        "Describe a typical day of a {x}.", "Write a job advertisement for a {x}.",
        "What challenges does a {x} face?", "Write a dialogue between a {x} and a {y}.",
        "What questions would you ask a {x} in an interview?",
    ],
    "place": [
        "Describe a {x}.", "What can you do at a {x}?", "Write a short story set in a {x}.",
        "What should I bring when I visit a {x}?", "Write a poem about a {x} at night.",
        "Plan a day out that includes a {x}.",
    ],
    "feeling": [
        "How can I deal with {x}?", "Why do people feel {x}?", "Write a poem about {x}.",
        "Describe {x} without naming it.", "Give me three tips for handling {x} at work.",
        "Write a short story about a child who learns about {x}.",
    ],
    "idea": [
        "Explain the idea of {x}.", "Why is {x} important?", "Write a motivational quote about {x}.",
        "How can I teach {x} to a beginner?", "Give me an example of {x} in everyday life.",
        "What is the difference between {x} and {y}?", "Write a short essay about {x}.",
        "Give me three tips for improving my {x}.",
    ],
    "activity": [
        "How do I get better at {x}?", "What are the benefits of {x}?",
        "Give me three tips for {x}.", "What are common mistakes in {x}?",
        "Write a short poem about {x}.", "How do I get started with {x}?",
    ],
    "event": [
        "Write a short poem about {x}.", "Describe {x} in three sentences.",
        "How do people usually celebrate or prepare for {x}?", "Write a short story about {x}.",
        "What do you remember most about {x}? Answer as a storyteller.",
    ],
    "process": [
        "What causes {x}?", "Explain how {x} works, step by step.", "Can you explain {x} with an "
        "analogy?", "Why does {x} happen?", "How does {x} affect everyday life?",
        "Describe {x} in simple terms.",
    ],
    "substance": [
        "What is {x} made of?", "Is {x} dangerous?", "What is {x} used for?",
        "Where does {x} come from?", "How is {x} produced?", "Compare {x} and {y}.",
    ],
    "thing": [
        "What is a {x}?", "Where can I find a {x}?", "Write a poem about a {x}.",
        "How is a {x} formed?",
    ],
    "body": [
        "What does the {x} do in the human body?", "How can I keep my {x} healthy?",
        "Explain how the {x} works.",
    ],
}

# Instruction styles appended to some requests.
STYLES = ["", "", "", "", " Keep it short.", " Answer in two sentences.", " Use simple words.",
          " Answer as a list.", " Explain it like I am five.", " Be concise.",
          " Give an example.", " Use a friendly tone."]
ADJECTIVES = ["small", "curious", "brave", "lazy", "clever", "old", "tiny", "happy", "shy",
              "noisy", "golden", "sleepy", "lonely", "friendly", "grumpy", "gentle", "strange"]
WISHES = ["wants to fly", "is afraid of the dark", "finds a hidden treasure", "learns to sing",
          "moves to a big city", "makes a new friend", "loses its way home", "wins a race",
          "builds a house", "travels around the world", "discovers a secret", "becomes famous"]
SEASONS = ["spring", "summer", "autumn", "winter"]


def wordnet_nouns(excluded):
    """(lemma, kind) of the common nouns, from WordNet's index and data files."""
    lexfile = {}
    with open(os.path.join(WORDNET, "data.noun"), encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue
            offset, lex = line.split(" ", 2)[:2]
            lexfile[offset] = int(lex)
    nouns = []
    with open(os.path.join(WORDNET, "index.noun"), encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue
            parts = line.split()
            lemma, synsets, pointers = parts[0], int(parts[2]), int(parts[3])
            tagged = int(parts[5 + pointers])
            offsets = parts[6 + pointers:6 + pointers + synsets]
            if tagged < MIN_TAGGED or not re.fullmatch(r"[a-z][a-z_-]*[a-z]", lemma):
                continue
            words = lemma.replace("_", " ")
            if any(w in excluded for w in re.split(r"[ -]", words)):
                continue
            kind = KINDS.get(lexfile.get(offsets[0], -1))
            if kind:
                nouns.append((words, kind))
    return nouns


def main():
    if len(sys.argv) not in (3, 5):
        sys.exit(__doc__)
    out, n = sys.argv[1], int(sys.argv[2])
    held_path, m = (sys.argv[3], int(sys.argv[4])) if len(sys.argv) == 5 else (None, 0)
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "examples", "prompts", "chat24.txt"), encoding="utf-8") as f:
        held_text = f.read().lower()
    held_lines = {line.strip() for line in held_text.splitlines() if line.strip()}
    excluded = set(re.findall(r"[a-z]+", held_text)) - {"a", "the", "of", "in", "to", "is"}
    nouns = wordnet_nouns(excluded)
    rng = random.Random(2026)
    rng.shuffle(nouns)
    # Topics of the held-out requests are set apart first, so no training request uses one.
    cut = len(nouns) // 10 if m else 0
    pools = {"train": nouns[cut:], "held": nouns[:cut]}

    def draw(pool, count, seen):
        by_kind = {}
        for word, kind in pool:
            by_kind.setdefault(kind, []).append(word)
        lines = []
        while len(lines) < count:
            word, kind = rng.choice(pool)
            shapes = SHAPES[kind] if rng.random() < 0.7 else SHAPES["any"]
            other = rng.choice(by_kind[kind])
            shape = rng.choice(shapes)
            if other == word and "{y}" in shape:
                continue
            p = shape.format(
                x=word, y=other, adj=rng.choice(ADJECTIVES), wish=rng.choice(WISHES),
                season=rng.choice(SEASONS)) + rng.choice(STYLES)
            p = re.sub(r"\b([Aa]) ([aeiou])", r"\1n \2", p)
            key = p.lower()
            if key in seen or key in held_lines:
                continue
            seen.add(key)
            lines.append(p)
        return lines

    seen = set()
    parts = [(out, draw(pools["train"], n, seen))]
    if held_path:
        parts.append((held_path, draw(pools["held"], m, seen)))
    for path, lines in parts:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"make_wordnet_prompts: {len(lines)} requests -> {path}")
    print(f"make_wordnet_prompts: {len(pools['train'])} training topics, "
          f"{len(pools['held'])} held-out topics, {sum(len(s) for s in SHAPES.values())} shapes")


if __name__ == "__main__":
    main()
