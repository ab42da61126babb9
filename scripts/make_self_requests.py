#!/usr/bin/env python3
"""Chat requests in wordings no template of ours writes, for SmolLM2's own-answer training data:
requests SmolLM2 itself writes when asked for one (self-instruct), and the user turns of the
`chatterbot-corpus` package's English conversations (BSD licence; written by people: tech
support, coding, trivia, feelings, small talk). The draft trained on templated requests
(scripts/make_chat_prompts.py, scripts/make_wordnet_prompts.py) agreed 57% of the time on
held-out answers of those templates and 40% on chat24's hand-written requests; these are the
other wordings.

Two steps, with SmolLM2's greedy decoding between them (`make draft-answers-self` runs all):

    .venv/bin/python scripts/make_self_requests.py ask OUT_FILE N
        N instructions asking for a request ("Write a question a curious person might ask an
        assistant about volcanoes. Reply with the question only."), over WordNet's common nouns
        (scripts/make_wordnet_prompts.py's list, without chat24's words) and 24 ways of asking.
    .venv/bin/python scripts/make_self_requests.py pick DECODED_JSONL CORPUS_DIR \\
            TRAIN_FILE HELDOUT_FILE M
        The requests from `decode --json` output over those instructions (a quoted sentence of
        4 words or more, or a first line that is a question; replies about the request rather
        than making one are dropped; each once), with the corpus's
        user turns (CORPUS_DIR: chatterbot_corpus/data/english), shuffled; M of them (half from
        each source) go to HELDOUT_FILE, the rest to TRAIN_FILE. No line equals a chat24 prompt.

A third, cheaper way (`make draft-answers-lists`): ask for five requests at once, so one
decoded reply gives three or four distinct requests instead of a third of one:

    .venv/bin/python scripts/make_self_requests.py ask-lists OUT_FILE N [--after M]
        N instructions asking for five requests about a WordNet noun, in 16 shapes ("Write five
        different questions that people might ask an AI assistant about X. Put each on its
        own line."); with --after M, the N after the first M of the same sequence (new ones).
    .venv/bin/python scripts/make_self_requests.py ask-questions OUT_FILE N [--after M]
        The same in 16 other shapes, question openings and askers the first ones leave out
        ("Write five questions starting with "Where" about X."), a sequence of its own (another
        15,280 instructions); its replies are picked the same way.
    .venv/bin/python scripts/make_self_requests.py pick-lists DECODED_JSONL TRAIN_FILE \\
            HELDOUT_FILE M [EXCLUDE_FILE ...]
        The numbered lines of those replies that read as a request (4 to 40 words, ending in
        ?, . or !, not about requests themselves), each once, none equal to a chat24 prompt or
        a line of an EXCLUDE_FILE (earlier request lists), shuffled; M go to HELDOUT_FILE.

Deterministic for given arguments and decoded text.
"""

import glob
import json
import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_wordnet_prompts import wordnet_nouns  # noqa: E402

ASKS = [
    "Write a question that a curious person might ask an AI assistant about {x}.",
    "Write a question a student might ask their teacher about {x}.",
    "Write a question about {x} that starts with \"How\".",
    "Write a question about {x} that starts with \"Why\".",
    "Write a question about {x} that starts with \"What\".",
    "Write a question about {x} that starts with \"Can\".",
    "Write a question someone might ask when they need advice about {x}.",
    "Write a request asking an AI assistant to write a short poem about {x}.",
    "Write a request asking an AI assistant to write a short story involving {x}.",
    "Write a request asking an AI assistant to explain {x} to a child.",
    "Write a request asking an AI assistant for a list of tips about {x}.",
    "Write a request asking an AI assistant to compare {x} with something similar.",
    "Write a message a customer might send to a help desk about a problem with {x}.",
    "Write a question a traveler might ask about {x}.",
    "Write a question a parent might ask about {x}.",
    "Write a question a scientist might ask about {x}.",
    "Write a question a cook might ask about {x}.",
    "Write a question a beginner might ask about {x}.",
    "Write an instruction asking someone to describe {x} in a few sentences.",
    "Write an instruction asking for a summary of what is known about {x}.",
    "Write a question that asks for the pros and cons of {x}.",
    "Write a question that asks how {x} works.",
    "Write a question that asks about the history of {x}.",
    "Write a funny question about {x}.",
]
SUFFIX = " Reply with the question or request only."

LIST_ASKS = [
    "Write five different questions that people might ask an AI assistant about {x}.",
    "Write five different requests that people might send to an AI assistant about {x}.",
    "Write five questions a beginner might ask about {x}.",
    "Write five questions a curious child might ask about {x}.",
    "Write five questions someone might ask an expert on {x}.",
    "Write five questions starting with \"How do I\" about {x}.",
    "Write five questions starting with \"Why\" about {x}.",
    "Write five questions starting with \"What is\" about {x}.",
    "Write five questions starting with \"Can you\" about {x}.",
    "Write five everyday questions someone might ask about their {x}.",
    "Write five questions people ask when they shop for {x}.",
    "Write five questions comparing {x} with other things.",
    "Write five requests asking an AI assistant to write something (a poem, a story, a letter, "
    "a plan) about {x}.",
    "Write five requests asking an AI assistant to explain something about {x}.",
    "Write five requests asking an AI assistant for advice about {x}.",
    "Write five questions about the history of {x}.",
]
# The same five-at-a-time asking in 16 other shapes: question openings and askers the first
# shapes do not use. (Shapes asking for tasks, "Write five requests asking an AI assistant to
# write an email that mentions X", were tried first: SmolLM2 answers them with titles and
# example sentences, not requests, about one usable line per instruction against these' two.)
QUESTION_ASKS = [
    "Write five questions starting with \"Where\" about {x}.",
    "Write five questions starting with \"When\" about {x}.",
    "Write five questions starting with \"Which\" about {x}.",
    "Write five questions starting with \"Who\" about {x}.",
    "Write five questions starting with \"Is it\" about {x}.",
    "Write five questions starting with \"Should I\" about {x}.",
    "Write five questions starting with \"Do\" about {x}.",
    "Write five questions starting with \"How much\" or \"How many\" about {x}.",
    "Write five questions starting with \"What are the best\" about {x}.",
    "Write five questions starting with \"What happens if\" about {x}.",
    "Write five questions a teenager might ask about {x}.",
    "Write five questions a teacher might ask a class about {x}.",
    "Write five questions someone might ask a friend about {x}.",
    "Write five questions a worried person might ask about {x}.",
    "Write five questions someone might ask before buying or using {x}.",
    "Write five questions a writer might ask about {x}.",
]
LIST_SUFFIX = " Put each one on its own line."
NUMBERED = re.compile(r"^\s*\d+[.)]\s*(.+?)\s*$")


def chat24():
    with open(os.path.join(HERE, "..", "examples", "prompts", "chat24.txt"), encoding="utf-8") as f:
        text = f.read().lower()
    lines = {line.strip() for line in text.splitlines() if line.strip()}
    words = set(re.findall(r"[a-z]+", text)) - {"a", "the", "of", "in", "to", "is"}
    return lines, words


def instructions(out, n, shapes, suffix, seed, after=0):
    """N distinct instructions: a shape of `shapes` over a WordNet noun (none of chat24's
    words), then `suffix`; the `after` first of the sequence are skipped (the sequence is the
    same whatever N, so later runs ask new things)."""
    _, words = chat24()
    nouns = [w for w, _ in wordnet_nouns(words)]
    rng = random.Random(seed)
    rng.shuffle(nouns)
    # At most one line per shape and noun: past that the sequence has nothing new to give.
    distinct = len(set(shapes)) * len(set(nouns))
    if after + n > distinct:
        sys.exit(f"{out}: {after} + {n} instructions asked, but {len(set(shapes))} shapes over "
                 f"{len(set(nouns))} nouns give at most {distinct} (add shapes or nouns)")
    lines, seen = [], set()
    while len(lines) < after + n:
        line = rng.choice(shapes).format(x=rng.choice(nouns)) + suffix
        if line not in seen:
            seen.add(line)
            lines.append(line)
    lines = lines[after:]
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{out}: {len(lines)} instructions over {len(nouns)} nouns (after the first {after})")


QUOTED = re.compile(r"[\"“]([^\"“”]{8,300}?)[\"”]")
# Replies that talk about the request instead of making one.
META = re.compile(r"\[|\bquestions?\b|\brequest\b|\bI'm (ready|here|glad)|how does it work\?|"
                  r"what's on your mind", re.I)


def clean(text):
    """The request in SmolLM2's reply to an instruction asking for one, or None: the first quoted
    sentence of four words or more ('A parent might ask, "Why ...?"'), else a first line that
    is itself a question."""
    for m in QUOTED.finditer(text):
        q = " ".join(m.group(1).split())
        if len(q.split()) >= 4 and q[-1] in "?.!" and not META.search(q):
            return q[0].upper() + q[1:]
    first = text.strip().split("\n")[0].strip().strip("\"'*` ")
    words = first.split()
    if 4 <= len(words) <= 40 and first.endswith("?") and first[0].isupper() \
            and not META.search(first) and "might ask" not in first:
        return first
    return None


def listed(text):
    """The requests in a reply to a list instruction: its numbered lines that read as one."""
    found = []
    for line in text.splitlines():
        m = NUMBERED.match(line)
        if not m:
            continue
        q = " ".join(m.group(1).strip("\"'*` ").split()).strip("\"“”'*` ")
        if 4 <= len(q.split()) <= 40 and q[-1] in "?.!" and q[0].isalpha() \
                and not META.search(q):
            found.append(q[0].upper() + q[1:])
    return found


def pick_lists(decoded, train_path, held_path, m, excluded):
    held_lines, _ = chat24()
    seen = set(held_lines)
    for path in excluded:
        with open(path, encoding="utf-8") as f:
            seen.update(line.strip().lower() for line in f if line.strip())
    kept, total = [], 0
    with open(decoded, encoding="utf-8") as f:
        for line in f:
            for q in listed(json.loads(line)["text"]):
                total += 1
                if q.lower() not in seen:
                    seen.add(q.lower())
                    kept.append(q)
    rng = random.Random(2030)
    rng.shuffle(kept)
    held, train = kept[:m], kept[m:]
    print(f"lists: {total} requests, {len(kept)} distinct and new, {m} held out")
    for path, items in ((train_path, train), (held_path, held)):
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(items) + "\n")
        print(f"{path}: {len(items)} requests")


def corpus_turns(corpus):
    import yaml

    turns = []
    for path in sorted(glob.glob(os.path.join(corpus, "*.yml"))):
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for conv in doc.get("conversations") or []:
            for i, turn in enumerate(conv):
                # Even turns are the person's, odd ones the bot's answers.
                if i % 2 == 0 and isinstance(turn, str):
                    t = " ".join(turn.split())
                    if len(t.split()) >= 2:
                        turns.append(t)
    return turns


def pick(decoded, corpus, train_path, held_path, m):
    held_lines, _ = chat24()
    own = []
    with open(decoded, encoding="utf-8") as f:
        for line in f:
            r = clean(json.loads(line)["text"])
            if r:
                own.append(r)
    sources = {"own": own, "corpus": corpus_turns(corpus)}
    rng = random.Random(2028)
    train, held, seen = [], [], set(held_lines)
    for name, items in sources.items():
        kept = []
        for item in items:
            key = item.lower()
            if key not in seen:
                seen.add(key)
                kept.append(item)
        rng.shuffle(kept)
        cut = m // 2
        held += kept[:cut]
        train += kept[cut:]
        print(f"{name}: {len(items)} requests, {len(kept)} distinct, {cut} held out")
    rng.shuffle(train)
    for path, items in ((train_path, train), (held_path, held)):
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(items) + "\n")
        print(f"{path}: {len(items)} requests")


def main():
    a = sys.argv[1:]
    if len(a) == 3 and a[0] == "ask":
        instructions(a[1], int(a[2]), ASKS, SUFFIX, 2027)
    elif len(a) == 6 and a[0] == "pick":
        pick(a[1], a[2], a[3], a[4], int(a[5]))
    elif len(a) in (3, 5) and a[0] == "ask-lists" and (len(a) == 3 or a[3] == "--after"):
        instructions(a[1], int(a[2]), LIST_ASKS, LIST_SUFFIX, 2029, int(a[4]) if len(a) == 5 else 0)
    elif len(a) in (3, 5) and a[0] == "ask-questions" and (len(a) == 3 or a[3] == "--after"):
        instructions(a[1], int(a[2]), QUESTION_ASKS, LIST_SUFFIX, 2031, int(a[4]) if len(a) == 5 else 0)
    elif len(a) >= 5 and a[0] == "pick-lists":
        pick_lists(a[1], a[2], a[3], int(a[4]), a[5:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
