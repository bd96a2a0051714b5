"""CPU per answer of the answer checks (``llm/answer_checks.py``) over realistic captions, side
by side with two baselines.

Why: every model answer is checked before it is cached or kept (3.2M answers for SA-V), on
the caption actor's event loop, where 1-2 ms of CPU per request is the whole budget; the
checks must stay under 0.2 ms per answer. Baselines, run on the same answers:

- **naive**: what one writes first: one case-insensitive regular expression per phrase of the
  refusal and leak lists, and the Gopher repetition rules as datatrove writes them for
  documents (n-grams joined into strings, every n from 2 to 10 counted);
- **parse**: ``json.loads`` of the chat-completion body the answer came in, a cost every
  answer pays anyway.

The answers: captions in the style of InternVL2's object, scene and video captions (1-6
sentences, 10-120 words), generated from a seed, plus 2 % bad ones (refusals, loops, leaks).

    .venv/bin/python benchmarks/answer_checks.py [--answers 3000 --repeat 5 --seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable

from refsav_pipeline.llm.answer_checks import STOPWORDS, AnswerChecker

SUBJECTS = ["the woman in the red jacket", "a brown dog", "the white delivery van",
            "a man holding a blue umbrella", "the small black cat", "a child on a bicycle",
            "the yellow taxi", "a gray pigeon", "the person in a green hoodie",
            "a silver car with tinted windows"]
ACTIONS = ["walks from the left side of the frame toward the center",
           "turns around and moves back to the right", "stands still near the doorway",
           "crosses the street in front of the parked bus", "jumps onto the low wall",
           "slows down and stops next to the bench", "runs behind the tree and reappears",
           "picks up a bag from the ground", "looks toward the camera for a moment"]
PLACES = ["in the bottom left part of the frame", "near the center of the scene",
          "beside a tall lamp post", "in front of the bakery window", "at the top right",
          "next to two people talking", "on the wet sidewalk", "under the striped awning"]
DETAILS = ["Its surface is smooth and slightly reflective.", "It has a round shape with a "
           "flat base.", "Other people pass by without stopping.", "The light comes from the "
           "right, casting a short shadow.", "A few leaves lie on the ground around it."]
BAD = ["I'm sorry, but I can't identify the object in this image.",
       "The image is completely black; I cannot see any object.",
       "The object outlined in yellow is in the center of the frame.",
       "The object in the yellow box moves left. " * 6,
       "这是一个红色的物体，位于画面的中央。"]


def captions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.02:
            out.append(rng.choice(BAD))
            continue
        k = rng.randint(1, 5)  # a caption does not say the same phrase twice
        sentences = []
        details = rng.sample(DETAILS, len(DETAILS))
        for subject, action, place in zip(rng.sample(SUBJECTS, k), rng.sample(ACTIONS, k),
                                          rng.sample(PLACES, k), strict=True):
            s = f"{subject} {action} {place}."
            sentences.append(s[0].upper() + s[1:])
            if details and rng.random() < 0.4:
                sentences.append(details.pop())
        out.append(" ".join(sentences))
    return out


# -- the naive baseline ------------------------------------------------------------------------

REFUSAL_PHRASES = ["sorry", "apologize", "as an ai", "language model", "i can't", "i cannot",
                   "i can not", "i'm unable", "i am unable", "unable to", "cannot see",
                   "cannot identify", "can't see", "cannot determine", "completely black",
                   "entirely black", "completely dark", "no object", "there is no object",
                   "not possible to"]
LEAK_PHRASES = ["yellow contour", "yellow outline", "yellow border", "yellow edge",
                "yellow bounding box", "yellow marker", "yellow highlight", "outlined in yellow",
                "in the yellow box", "in a yellow box", "inside the yellow box", "highlighted",
                "marked in yellow", "the boxed object", "the outlined object", "bounding box"]
NAIVE_PATTERNS = [re.compile(rf"\b{re.escape(p)}\b", re.I) for p in REFUSAL_PHRASES + LEAK_PHRASES]


def naive_check(text: str) -> bool:
    if not text.strip():
        return False
    words = re.findall(r"\w+", text.lower())
    if len(words) > 300 or sum(w in STOPWORDS for w in words) < 0.12 * len(words):
        return False
    if any(p.search(text) for p in NAIVE_PATTERNS):
        return False
    for n, limit in ((2, 0.20), (3, 0.18), (4, 0.16)):
        grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
        if grams:
            gram, count = Counter(grams).most_common(1)[0]
            if len(gram) * count > limit * len(text):
                return False
    for n, limit in ((5, .15), (6, .14), (7, .13), (8, .12), (9, .11), (10, .10)):
        grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
        seen: set[str] = set()
        repeated = i = 0
        while i < len(grams):
            if grams[i] in seen:
                repeated += len(grams[i])
                i += n
            else:
                seen.add(grams[i])
                i += 1
        if repeated > limit * len(text):
            return False
    return True


def per_answer_us(fn: Callable[[str], object], answers: list[str], repeat: int) -> float:
    """Median over ``repeat`` passes of the mean CPU microseconds per answer."""
    runs = []
    for _ in range(repeat):
        t0 = time.process_time()
        for a in answers:
            fn(a)
        runs.append((time.process_time() - t0) / len(answers) * 1e6)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--answers", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    answers = captions(args.answers, args.seed)
    bodies = {a: json.dumps({"id": "chatcmpl-x", "object": "chat.completion", "model": "m",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": a}}],
                             "usage": {"prompt_tokens": 900, "completion_tokens": 80,
                                       "total_tokens": 980}}) for a in answers}
    checker = AnswerChecker()
    ours = per_answer_us(lambda a: checker.check("video", a), answers, args.repeat)
    naive = per_answer_us(naive_check, answers, args.repeat)
    parse = per_answer_us(lambda a: json.loads(bodies[a]), answers, args.repeat)
    flagged = sum(checker.check("video", a) is not None for a in answers)
    bad = sum(a in BAD for a in answers)
    words = statistics.mean(len(a.split()) for a in answers)
    result = {"answers": len(answers), "mean_words": round(words, 1), "flagged": flagged,
              "bad": bad,
              "checks_us": round(ours, 1), "naive_us": round(naive, 1),
              "parse_us": round(parse, 1), "naive_over_checks": round(naive / ours, 2),
              "checks_over_parse": round(ours / parse, 2), "target_us": 200.0,
              "met": ours < 200.0}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{len(answers)} answers, {words:.0f} words on average, {bad} bad, {flagged} flagged")
    print(f"answer checks      {ours:8.1f} µs/answer   (target < 200: "
          f"{'met' if ours < 200 else 'NOT met'})")
    print(f"naive baseline     {naive:8.1f} µs/answer   naive / checks = {naive / ours:.2f}")
    print(f"parse of the body  {parse:8.1f} µs/answer   checks / parse = {ours / parse:.2f}")
    print(f"RESULT answer checks {ours:.1f} µs/answer (target < 200: "
          f"{'met' if ours < 200 else 'NOT met'}); naive / ours {naive / ours:.2f}x; "
          f"ours / JSON parse of the body {ours / parse:.1f}x")


if __name__ == "__main__":
    main()
