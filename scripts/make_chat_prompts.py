#!/usr/bin/env python3
"""Writes everyday chat requests for SmolLM2's own-answer training data (feature draft, heads):
many request shapes (explain, list, compare, how-to, write a poem/story/email, advise, plan,
define, summarise, translate, code) filled from the `faker` package's word lists (jobs,
countries, cities, colours, names, companies, catch phrases, words), from small everyday topic
lists below, and from the Python standard library's functions. Deterministic for a given N.
No line equals one of the held-out evaluation prompts (examples/prompts/chat24.txt); the script
skips any that would.

    .venv/bin/python scripts/make_chat_prompts.py OUT_FILE [N [HELDOUT_FILE M]] [--after K]

With HELDOUT_FILE, the M requests drawn after the first N go there: held-out requests that share
no line with the training ones (their answers measure the draft on chat it never saw).
`--after K` first draws and drops K requests: `--after 2688` continues where `make
draft-answers` (2,560 + 128) stopped, so the new requests share no line with either of its files.
"""

import importlib
import inspect
import os
import random
import sys

ANIMALS = ["dog", "cat", "horse", "owl", "dolphin", "elephant", "bee", "fox", "penguin", "rabbit",
           "wolf", "turtle", "parrot", "octopus", "lion", "frog", "bat", "whale", "ant", "crow"]
FOODS = ["bread", "rice", "lentil soup", "pancakes", "salad", "omelette", "curry", "pizza",
         "banana bread", "porridge", "stir-fried vegetables", "hummus", "chili", "risotto",
         "apple pie", "fried rice", "guacamole", "roast chicken", "noodles", "smoothie"]
HOBBIES = ["gardening", "chess", "running", "painting", "photography", "knitting", "cooking",
           "hiking", "swimming", "playing the guitar", "reading", "birdwatching", "cycling",
           "yoga", "baking", "writing poetry", "learning a language", "woodworking", "dancing",
           "camping"]
SCIENCE = ["gravity", "electricity", "magnetism", "evolution", "the immune system", "volcanoes",
           "earthquakes", "the moon's phases", "rainbows", "tides", "DNA", "black holes",
           "the greenhouse effect", "sound waves", "friction", "clouds", "digestion",
           "the heart", "batteries", "lightning", "atoms", "photosynthesis in algae", "erosion",
           "vaccines", "the solar system"]
TECH = ["a database", "an operating system", "a web browser", "the internet", "encryption",
        "a compiler", "machine learning", "a spreadsheet", "cloud storage", "a password manager",
        "version control", "an API", "a search engine", "Wi-Fi", "a CPU", "RAM", "email",
        "a virus scanner", "open-source software", "a smartphone"]
OBJECTS = ["umbrella", "lamp", "backpack", "bicycle", "notebook", "teapot", "clock", "chair",
           "kite", "mirror", "candle", "telescope", "piano", "boat", "key", "garden", "bridge",
           "train", "library", "window"]
SEASONS = ["spring", "summer", "autumn", "winter", "a rainy day", "a snowy morning", "the night",
           "sunrise", "a storm", "the first day of school"]
LANGUAGES = ["French", "Spanish", "German", "Italian", "Portuguese"]
PHRASES = ["thank you very much", "where is the train station?", "I am learning to cook",
           "see you tomorrow", "the weather is nice today", "I would like a coffee, please",
           "happy birthday", "how much does this cost?", "I love reading books",
           "what time is it?"]
MODULES = ["os", "json", "re", "itertools", "functools", "collections", "math", "random",
           "string", "datetime", "pathlib", "csv", "heapq", "bisect", "textwrap", "statistics"]

TEMPLATES = [
    # explain / why / how
    "What is {science}?",
    "Explain {science} in simple terms.",
    "Why does {science} matter in everyday life?",
    "How does {tech} work?",
    "Explain {tech} to someone who has never used a computer.",
    "What is the difference between {tech} and {tech2}?",
    "How do {animal}s communicate?",
    "Why do {animal}s behave the way they do?",
    "What does a {animal} eat?",
    "Explain how {science} works, step by step.",
    "What are the main causes of {science}?",
    "Can you explain {science} using an analogy?",
    # lists
    "List five facts about {animal}s.",
    "List three ways to enjoy {hobby}.",
    "Name five things you can do in {city}.",
    "List some common mistakes beginners make when {hobby}.",
    "Give me five ideas for a {season} weekend.",
    "List five uses for an old {object}.",
    "What are four benefits of {hobby}?",
    "Give me a list of words that rhyme with {word}.",
    # how-to / advice
    "How do I get started with {hobby}?",
    "How can I cook {food} at home?",
    "Give me a simple recipe for {food}.",
    "How do I take care of a pet {animal}?",
    "What is the best way to learn {hobby}?",
    "How can I save money as a {job}?",
    "Give me some tips for a job interview as a {job}.",
    "How should I prepare for a trip to {country}?",
    "How can I be more productive when working from home?",
    "What should I do if my {object} breaks?",
    "How do I explain {science} to my little brother?",
    "What are some healthy alternatives to {food}?",
    "Give me three tips for {hobby} in {season}.",
    # writing
    "Write a poem about {season}.",
    "Write a short poem about a {animal}.",
    "Write a haiku about {object}s.",
    "Write a four-line poem about {hobby}.",
    "Write a short story about a {animal} who wants to be a {job}.",
    "Write a short story set in {city}.",
    "Write a bedtime story about a {color} {object}.",
    "Write a thank-you note to {name} for a gift.",
    "Write an email to {name} inviting them to a {food} dinner.",
    "Write a short speech for {name}'s retirement party.",
    "Write a product description for a {color} {object}.",
    "Write a slogan for {company}.",
    "Write a tweet announcing that {company} will {bs}.",
    "Write a riddle whose answer is a {object}.",
    "Write a dialogue between a {job} and a {job2}.",
    "Write a limerick about {hobby}.",
    "Write a letter to a friend describing {city}.",
    # compare / opinion
    "What are the pros and cons of {hobby}?",
    "Compare living in {city} with living in the countryside.",
    "Is it better to learn {hobby} or {hobby2}? Explain.",
    "Which is healthier, {food} or {food2}?",
    "What makes a good {job}?",
    # facts / geography / history
    "Tell me about the culture of {country}.",
    "What language is spoken in {country}?",
    "What is {country} famous for?",
    "Describe the food of {country}.",
    "What is the weather like in {city} in {season}?",
    "Give me a short history of the {object}.",
    "Who invented the {object}?",
    # define / words
    "What does the word \"{word}\" mean?",
    "Use the word \"{word}\" in three sentences.",
    "What is a synonym for \"{word}\"?",
    "Explain the phrase \"{phrase}\".",
    "Translate \"{sentence}\" into {language}.",
    "How do you say \"{sentence}\" in {language}?",
    # summarise / rewrite
    "Summarise the job of a {job} in one paragraph.",
    "Rewrite this sentence to sound more formal: \"{casual}\"",
    "Make this sentence more polite: \"{casual}\"",
    "Correct the grammar in this sentence: \"{casual}\"",
    # planning
    "Plan a one-day trip to {city}.",
    "Suggest a weekly exercise plan for a beginner.",
    "Plan a birthday party for {name}, who loves {hobby}.",
    "Make a shopping list for cooking {food}.",
    "Suggest a name for a {animal} that is {color}.",
    "Suggest three names for a shop that sells {object}s.",
    # code
    "Write a Python function that {task}.",
    "How do I {task} in Python?",
    "Explain what this Python call does: `{func}`.",
    "Give an example of using `{func}` in Python.",
    "What is {tech} used for in programming?",
    # maths / reasoning
    "What is {a} times {b}?",
    "If I have {a} apples and give away {b}, how many are left?",
    "Explain how to calculate the average of {a}, {b} and {c}.",
    "What is {a} percent of {b0}?",
    "Convert {a} kilometres to miles.",
]

TASKS = ["reverses a string", "counts the vowels in a word", "checks whether a number is prime",
         "sorts a list of names", "reads a text file line by line", "finds the largest number in "
         "a list", "removes duplicates from a list", "converts Celsius to Fahrenheit",
         "counts how often each word appears in a sentence", "checks whether a word is a "
         "palindrome", "adds up the numbers in a list", "merges two dictionaries",
         "returns the factorial of a number", "prints the multiplication table of 7",
         "splits a sentence into words"]
CASUAL = ["hey, send me the report asap", "i cant come to the meeting tomorrow",
          "we was going to the shop", "can u help me with this thing", "the food were great",
          "gimme a call when you're free", "this movie is kinda boring", "i dont know nothing "
          "about it", "their going to be late", "thanks for the stuff yesterday"]


def stdlib_calls():
    calls = []
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        for name, obj in sorted(vars(mod).items()):
            if not name.startswith("_") and callable(obj) and inspect.getdoc(obj):
                calls.append(f"{mod_name}.{name}()")
    return calls


def main():
    args = sys.argv[1:]
    after = 0
    if "--after" in args:
        i = args.index("--after")
        after = int(args[i + 1])
        del args[i:i + 2]
    out = args[0] if len(args) > 0 else "target/heads/smollm2-chat.txt"
    n = int(args[1]) if len(args) > 1 else 3000
    held_path = args[2] if len(args) > 3 else None
    m = int(args[3]) if held_path else 0
    import faker

    fake = faker.Faker("en_US")
    fake.seed_instance(2026)
    rng = random.Random(2026)
    calls = stdlib_calls()
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "examples", "prompts", "chat24.txt"), encoding="utf-8") as f:
        held_out = {line.strip().lower() for line in f if line.strip()}
    prompts, seen = [], set()
    while len(prompts) < after + n + m:
        two = lambda xs: rng.sample(xs, 2)
        tech, tech2 = two(TECH)
        hobby, hobby2 = two(HOBBIES)
        food, food2 = two(FOODS)
        p = rng.choice(TEMPLATES).format(
            science=rng.choice(SCIENCE), tech=tech, tech2=tech2, animal=rng.choice(ANIMALS),
            hobby=hobby, hobby2=hobby2, food=food, food2=food2, object=rng.choice(OBJECTS),
            season=rng.choice(SEASONS), city=fake.city(), country=fake.country(),
            job=fake.job().lower(), job2=fake.job().lower(), color=fake.color_name().lower(),
            name=fake.first_name(), word=fake.word(), company=fake.company(), bs=fake.bs(),
            phrase=fake.catch_phrase().lower(), sentence=rng.choice(PHRASES),
            language=rng.choice(LANGUAGES), casual=rng.choice(CASUAL), task=rng.choice(TASKS),
            func=rng.choice(calls), a=rng.randint(2, 60), b=rng.randint(2, 30),
            c=rng.randint(2, 90), b0=rng.choice([50, 80, 120, 200, 250, 400, 1000]))
        key = p.lower()
        if key in seen:
            continue
        if key in held_out:
            continue
        seen.add(key)
        prompts.append(p)
    assert not held_out & {p.lower() for p in prompts}
    prompts = prompts[after:]
    for path, part in [(out, prompts[:n]), (held_path, prompts[n:])]:
        if path is None:
            continue
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(p.replace("\n", " ") for p in part) + "\n")
        print(f"make_chat_prompts: {len(part)} requests from {len(TEMPLATES)} shapes -> {path}")


if __name__ == "__main__":
    main()
