"""A small text routing problem to try the command line on: a log of LLM
traffic with prompt text, new prompts to route, and a new LLM's labels.

Prompts are drawn from templates on six topics (arithmetic, capitals,
code, history, translation, short writing), so that a sentence encoder
separates them, and each simulated LLM has its own skill per topic and a
price per prompt in USD: a cheap generalist that is weak at arithmetic and
code, a mathematics and a code specialist, and an expensive LLM good at
everything. A router should learn to send arithmetic to the mathematics
LLM, code to the coder, and the rest to the cheap one, unless the budget
allows the big one. The outcomes are random (0/1 per answer), a few
prompts were asked twice with different outcomes, and a few labels are
missing, as in a real log.
"""

from __future__ import annotations

import csv
import io
import os
from typing import NamedTuple

import numpy as np

TOPICS = ("arithmetic", "capitals", "code", "history", "translation",
          "writing")

# P(correct) per topic, and the price per prompt in USD.
LLMS = {
    "tiny-llm": ((0.25, 0.85, 0.15, 0.55, 0.85, 0.70), 0.0001),
    "math-llm": ((0.95, 0.60, 0.45, 0.50, 0.55, 0.50), 0.0008),
    "coder-llm": ((0.60, 0.65, 0.92, 0.55, 0.60, 0.55), 0.0015),
    "big-llm": ((0.92, 0.93, 0.90, 0.90, 0.92, 0.90), 0.0060),
}
NEW_LLM = ("history-llm", (0.30, 0.95, 0.20, 0.93, 0.70, 0.80), 0.0004)

_COUNTRIES = ("France", "Japan", "Kenya", "Peru", "Norway", "Egypt", "Canada",
              "Vietnam", "Chile", "Poland", "Ghana", "Nepal", "Spain",
              "Brazil", "Turkey", "Finland", "Mexico", "India", "Morocco",
              "Greece", "Sweden", "Argentina", "Thailand", "Portugal",
              "Ireland", "Hungary", "Colombia", "Senegal", "Austria",
              "Indonesia", "Mongolia", "Iceland")
_EVENTS = ("the fall of the Berlin Wall", "the first Moon landing",
           "the signing of the Magna Carta", "the French Revolution",
           "the end of the Second World War", "the invention of the printing "
           "press", "the founding of Rome", "the sinking of the Titanic",
           "the start of the Meiji era", "the unification of Germany",
           "the fall of Constantinople", "the American Declaration of "
           "Independence", "the Battle of Hastings", "the end of apartheid",
           "the first powered flight", "the Russian Revolution",
           "the opening of the Suez Canal", "the Treaty of Westphalia",
           "the independence of India", "the discovery of penicillin")
_TASKS = ("reverses a list", "checks whether a string is a palindrome",
          "counts the words in a file", "merges two sorted lists",
          "returns the n-th Fibonacci number", "removes duplicates from a "
          "list", "parses a date string", "computes a moving average",
          "flattens a nested list", "finds the largest element of an array",
          "sorts a list of records by a key", "validates an email address",
          "converts Celsius to Fahrenheit", "reads a CSV file into rows")
_LANGUAGES = ("Python", "JavaScript", "Rust", "Go", "C++", "Java")
_PHRASES = ("good morning", "where is the station", "thank you very much",
            "I would like a coffee", "see you tomorrow", "how much does it "
            "cost", "the weather is nice today", "I am lost", "happy "
            "birthday", "the bill, please", "my name is Anna", "it is raining")
_TARGETS = ("Spanish", "French", "German", "Italian", "Portuguese", "Dutch")
_FORMS = ("a haiku", "a limerick", "a two-line poem", "a short slogan",
          "a one-sentence story", "a short toast")
_SUBJECTS = ("autumn rain", "a lighthouse", "the sea at night", "coffee",
             "a lost cat", "city lights", "mountains", "a train journey",
             "the first snow", "an old bookshop", "a summer market",
             "a quiet library", "the harvest moon", "a river at dawn")


def _prompt(rng, topic: str) -> str:
  pick = lambda items: items[rng.integers(len(items))]
  if topic == "arithmetic":
    a, b = rng.integers(12, 999, 2)
    op = pick(("times", "plus", "minus", "divided by"))
    return pick((f"What is {a} {op} {b}? Give the exact answer.",
                 f"Compute {a} {op} {b}."))
  if topic == "capitals":
    country = pick(_COUNTRIES)
    return pick((f"What is the capital city of {country}?",
                 f"Which city is the capital of {country}?",
                 f"Name the capital of {country}."))
  if topic == "code":
    language, task = pick(_LANGUAGES), pick(_TASKS)
    return pick((f"Write a {language} function that {task}, with a short "
                 "docstring.",
                 f"In {language}, implement a function that {task}."))
  if topic == "history":
    event = pick(_EVENTS)
    return pick((f"In which year did {event} happen, and why does it matter?",
                 f"When did {event} take place?",
                 f"What led to {event}?",
                 f"Explain the consequences of {event}."))
  if topic == "translation":
    phrase, language = pick(_PHRASES), pick(_TARGETS)
    return pick((f"Translate '{phrase}' into {language}.",
                 f"How do you say '{phrase}' in {language}?"))
  form, subject = pick(_FORMS), pick(_SUBJECTS)
  return pick((f"Write {form} about {subject}.",
               f"Compose {form} on the theme of {subject}."))


def _prompts(rng, n: int, taken: set[str]) -> tuple[list[str], np.ndarray]:
  """n new prompts, the topics drawn evenly (a topic redraws its own
  prompt until it is new)."""
  texts, topics = [], []
  while len(texts) < n:
    topic = int(rng.integers(len(TOPICS)))
    for _ in range(1000):
      text = _prompt(rng, TOPICS[topic])
      if text not in taken:
        break
    else:
      raise ValueError(f"the example's {TOPICS[topic]} prompts are used up; "
                       "ask for fewer prompts")
    taken.add(text)
    texts.append(text)
    topics.append(topic)
  return texts, np.asarray(topics)


class Example(NamedTuple):
  """The paths :func:`write_example` wrote."""

  traffic: str        # prompt, model, correct, cost: one row per answer
  new_prompts: str    # one prompt per line, to route
  new_llm_labels: str  # prompt, correct: a new LLM on the traffic's prompts


def write_example(folder, *, num_prompts: int = 360, num_new: int = 40,
                  seed: int = 0) -> Example:
  """Writes the example into ``folder`` (created if needed); never
  overwrites a file.

  Args:
    folder: where to write ``traffic.csv``, ``new_prompts.txt`` and
      ``new_llm_labels.csv``.
    num_prompts: distinct prompts in the traffic log (each answered by the
      four LLMs of :data:`LLMS`).
    num_new: new prompts to route.
    seed: the random seed; the same seed writes the same files.
  """
  from uniroute_jax import io as files
  folder = os.fspath(folder)
  os.makedirs(folder, exist_ok=True)
  names = ("traffic.csv", "new_prompts.txt", "new_llm_labels.csv")
  paths = Example(*(os.path.join(folder, name) for name in names))
  for path in paths:
    if os.path.lexists(path):
      raise FileExistsError(f"{path} exists; it is never overwritten")
  rng = np.random.default_rng(seed)
  taken: set[str] = set()
  texts, topics = _prompts(rng, num_prompts, taken)
  rows = []
  for text, topic in zip(texts, topics):
    for model, (skill, price) in LLMS.items():
      if rng.random() < 0.04:
        continue                          # a lost answer: no label
      asked = 2 if rng.random() < 0.08 else 1   # asked again
      for _ in range(asked):
        correct = int(rng.random() < skill[topic])
        rows.append((text, model, correct, f"{price * rng.uniform(0.8, 1.2):.6f}"))
  new_texts, _ = _prompts(rng, num_new, taken)
  _, skill, _ = NEW_LLM
  labels = [(text, int(rng.random() < skill[topic]))
            for text, topic in zip(texts, topics)]
  files.atomic_write(paths.traffic, lambda f: f.write(
      _csv(("prompt", "model", "correct", "cost"), rows)), binary=False)
  files.atomic_write(paths.new_prompts, lambda f: f.write(
      "".join(t + "\n" for t in new_texts)), binary=False)
  files.atomic_write(paths.new_llm_labels, lambda f: f.write(
      _csv(("prompt", "correct"), labels)), binary=False)
  return paths


def _csv(header, rows) -> str:
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  return text.getvalue()
