"""Is a model's answer usable data? Checks run on every answer before it is cached or kept.

A 200 answer is input, like a file: it can be empty, cut at the token limit, a refusal, a
runaway or a repetition loop, another language, or name the yellow marks we drew (which a
referring expression must not: docs/quality.md). Each check returns a ``Defect`` whose
``kind`` becomes the row's ``error_kind`` when every attempt failed.

Cheap on purpose (``benchmarks/answer_checks.py``): one tokenisation per answer, three
precompiled regular expressions for the phrase lists, and the costly n-gram counts of the
repetition rules only when a shorter n-gram repeats at all.

The repetition rules follow the Gopher paper's (Rae et al. 2021, table A1), as datatrove's
``GopherRepetitionFilter`` implements them for documents: duplicate sentences (a caption's
lines), the character share of the most frequent 2-4-gram, and of repeated 5-10-grams.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from refsav_pipeline.llm.config import AnswerChecksConfig, CheckedCall

DefectKind = Literal["empty_answer", "truncated", "runaway", "not_english", "refusal",
                     "repetition", "prompt_leak", "unparseable_output"]
DEFECT_KINDS: tuple[DefectKind, ...] = ("empty_answer", "truncated", "runaway", "not_english",
                                        "refusal", "repetition", "prompt_leak")
"""In the order they are checked: an answer gets the first kind it fails."""
UNPARSEABLE: DefectKind = "unparseable_output"
"""Not a check of this module: a structured answer (the judge's JSON) its parser refused."""


class Defect(BaseModel):
    """Why an answer is not usable: ``kind`` (one of ``DEFECT_KINDS``) and a short detail."""

    model_config = ConfigDict(frozen=True)

    kind: DefectKind
    detail: str


# -- phrase lists -----------------------------------------------------------------------------
# Each list is (trigger, pattern): the pattern runs only on answers (lower-cased) containing its
# trigger, a substring test at C speed, so a clean caption costs a few substring scans instead
# of a large alternation tried at every position.

_REFUSAL: list[tuple[str, re.Pattern[str]]] = [(t, re.compile(p)) for t, p in [
    ("sorry", r"\bsorry\b"),
    ("apologi", r"\bapologi[sz]e"),
    ("as an ai", r"\bas an ai\b"),
    ("language model", r"\bas an? (?:ai |large )?language model\b"),
    ("unable", r"\b(?:i'?m|i am|i was) unable\b|\bunable to (?:see|identify|determine|describe|"
               r"find|tell|make out|discern|provide|view|answer)\b"),
    ("not able", r"\b(?:i'?m|i am) not able\b"),
    ("i can", r"\bi can(?:'t|not|’t| not)\b"),
    ("i do", r"\bi (?:do not|don'?t|don’t) (?:see|know|have)\b"),
    ("can", r"\b(?:cannot|can'?t|can’t|can not) (?:be )?(?:see|seen|identif(?:y|ied)|"
            r"determine[d]?|discern(?:ed)?|make out|made out|tell)\b"),
    ("black", r"\b(?:completely|entirely|totally|fully|all|only) (?:black|dark|blank)\b"),
    ("dark", r"\b(?:completely|entirely|totally|too) dark\b"),
    ("blank", r"\b(?:is|are|appears?|seems?) (?:to be )?(?:completely |entirely )?blank\b"),
    ("no ", r"\bno (?:visible |discernible )?objects? (?:is |are )?(?:visible|present|shown|"
            r"can be seen|in (?:the|this) image)\b|\bthere (?:is|are) no (?:visible )?objects?\b"),
    ("possible to", r"\bnot possible to (?:see|identify|determine|tell)\b"),
]]
"""Refusals and inability: the model answered, but not with a description."""

_MARK = (r"(?:contour|outline|outlining|border|bounding box|edge|edging|highlight(?:ing)?|"
         r"marker|marking|box|rectangle|square|frame|line|circle|mark)s?")
_LEAK: list[tuple[str, re.Pattern[str]]] = [(t, re.compile(p)) for t, p in [
    ("yellow", r"\byellow[- ](?:contour|outline|outlin(?:ed|ing)|border(?:ed)?|bounding|"
               r"edge[ds]?|edging|highlight(?:ed|ing)?|marker|marking|mark)s?\b"),
    ("yellow", r"\b(?:in|inside|within|by|with|from|enclosed in|surrounded by|marked by|"
               rf"framed by) (?:a|the|its|this) (?:thin |bright )?yellow {_MARK}\b"),
    ("yellow", r"\b(?:outlined|boxed|marked|highlighted|circled|framed|enclosed|bordered|"
               r"delineated|indicated|surrounded|shown|traced) (?:in|by|with) (?:a |the )?"
               r"(?:thin |bright )?yellow\b"),
    ("highlighted", r"\bhighlighted\b"),
    ("ed ", r"\b(?:the|an?|this) (?:outlined|boxed|marked|circled|bounded) (?:object|region|"
            r"area|item|one|thing|figure|shape|person|animal|vehicle)\b"),
    ("box", r"\b(?:the|a) bounding box\b"),
    ("marker", r"\b(?:the|a) marker\b"),
]]
"""Words naming our visual prompt (yellow contour in the scene image, yellow box in the video
frames). A yellow *object* ("the yellow taxi", "a yellow box on the shelf") is not a leak: a
yellow box or line counts only inside a phrase that places the object in it."""


def _first(patterns: list[tuple[str, re.Pattern[str]]], low: str) -> re.Match[str] | None:
    for trigger, pattern in patterns:
        if trigger in low:
            m = pattern.search(low)
            if m:
                return m
    return None


_FOREIGN = re.compile(
    "[\u0370-\u03ff\u0400-\u052f\u0530-\u058f\u0590-\u08ff\u0900-\u0dff\u0e00-\u0fff"
    "\u1000-\u109f\u10a0-\u10ff\u1100-\u11ff\u3040-\u30ff\u3100-\u9fff\uac00-\ud7af"
    "\uf900-\ufaff\uff00-\uffef]")
"""Letters of non-Latin scripts (Greek, Cyrillic, Armenian, Hebrew, Arabic, Indic, Thai,
Georgian, Hangul, kana, CJK, full-width forms)."""

_NOT_PROSE = re.compile(r"```|\*\*|^\s*(?:#{1,6}\s|[-*+•]\s|\d+[.)]\s|[{\[|<])|</?[a-z_]+>",
                        re.M)
"""Markdown (headings, bullets, numbered lists, bold, code fences, tables), JSON and tags."""
_NOT_PROSE_TRIGGERS = ("\n", "`", "**", "<", "#", "{", "[", "|")

_PUNCT_TO_SPACE = str.maketrans({c: " " for c in ".,;:!?\"()[]{}<>/\\|*#`~=+_—–-…“”‘"})
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

STOPWORDS = frozenset("""
a an the and or but of in on at to from by with without for as is are was were be been being
it its it's this that these those there here which who whom whose what while when where then
than so such not no into onto over under above below near behind between through across along
around up down left right out off has have had having do does did can could will would may
might should very also both each other another more most some any all one two their his her
they them he she we you i
""".split())  # noqa: SIM905
"""English function words: English prose has 30-50 % of them; other languages in Latin
script (French, Spanish, German, …) have almost none of these."""

OTHER_STOPWORDS = frozenset("""
le la les des du est et une dans sur avec pour qui que el los las del es y una con por para
está der das und ist ein eine mit auf den dem nicht il di che della sono um uma não com os
""".split())  # noqa: SIM905
"""Function words of French, Spanish, German, Italian and Portuguese that English text does
not use: an answer with more of them than English ones is in another language (German "in",
"die" or "was" alone would pass the English share)."""

TOP_NGRAM_MIN_COUNT = 3
"""The most frequent n-gram counts from three occurrences on: Gopher's rule is for documents,
and a two-sentence caption says "in front of the" twice without repeating itself."""


def _ngram_chars(gram: tuple[str, ...]) -> int:
    return sum(map(len, gram)) + len(gram) - 1


class AnswerChecker:
    """The checks of one config, compiled once; ``check`` is the whole verdict on an answer."""

    def __init__(self, cfg: AnswerChecksConfig | None = None) -> None:
        self.cfg = cfg or AnswerChecksConfig()
        self._top = sorted(self.cfg.max_top_ngram_fraction.items())
        self._dup = sorted(self.cfg.max_duplicate_ngram_fraction.items())

    def check(self, call: CheckedCall, text: str | None,
              finish_reason: str | None = "stop") -> Defect | None:
        """The first defect of an answer's raw text (``None``: usable). For the judge's JSON,
        check the raw text here with ``prose=False`` and its fields with ``check_prose``."""
        raw = self.check_raw(text, finish_reason)
        if raw is not None:
            return raw
        return self.check_prose(call, text or "")

    @staticmethod
    def check_raw(text: str | None, finish_reason: str | None = "stop") -> Defect | None:
        """Empty (null, "" or whitespace) and truncated (``finish_reason`` not ``stop``)."""
        if text is None:
            return Defect(kind="empty_answer", detail="content is null")
        if not text.strip():
            return Defect(kind="empty_answer", detail="content is empty")
        if finish_reason != "stop":
            return Defect(kind="truncated", detail=f"finish_reason {finish_reason!r}")
        return None

    def check_prose(self, call: CheckedCall, text: str) -> Defect | None:
        """The checks on what a caption says: runaway, language, refusal, repetition, leak."""
        cfg = self.cfg
        if not text.strip():
            return Defect(kind="empty_answer", detail="no text")
        limit = cfg.max_words.get(call)
        if limit is not None and len(text) > 20 * limit:  # far too long: no need to tokenise
            return Defect(kind="runaway", detail=f"{len(text)} characters")
        low = text.lower()
        words = low.translate(_PUNCT_TO_SPACE).split()
        if limit is not None and len(words) > limit:
            return Defect(kind="runaway", detail=f"{len(words)} words (limit {limit})")
        defect = self._language(text, low, words)
        if defect is not None:
            return defect
        m = _first(_REFUSAL, low)
        if m:
            return Defect(kind="refusal", detail=f"says {m.group(0)!r}")
        defect = self._repetition(text, words)
        if defect is not None:
            return defect
        if call in cfg.leak_calls:
            m = _first(_LEAK, low)
            if m:
                return Defect(kind="prompt_leak", detail=f"names the visual prompt: "
                                                         f"{m.group(0)!r}")
        return None

    def _language(self, text: str, low: str, words: Sequence[str]) -> Defect | None:
        cfg = self.cfg
        head = text.lstrip()[:1]
        if (head and (head.isdigit() or head in "-+•*")) or \
                any(t in text for t in _NOT_PROSE_TRIGGERS):
            m = _NOT_PROSE.search(low)
            if m:
                return Defect(kind="not_english", detail=f"not prose: {m.group(0).strip()!r}")
        foreign = len(_FOREIGN.findall(text))
        if foreign:
            letters = sum(map(str.isalpha, text))
            if foreign > cfg.max_foreign_letter_fraction * letters:
                return Defect(kind="not_english",
                              detail=f"{foreign} characters of a non-Latin script")
        if len(words) >= cfg.language_min_words:
            english = sum(w in STOPWORDS for w in words)
            other = sum(w in OTHER_STOPWORDS for w in words)
            if english < cfg.min_stopword_fraction * len(words) or other > english:
                return Defect(kind="not_english", detail=f"{english} English and {other} other "
                              f"function words in {len(words)} words")
        return None

    def _repetition(self, text: str, words: Sequence[str]) -> Defect | None:
        cfg = self.cfg
        n_chars = len(text)
        sentences = [s.strip().lower() for s in _SENTENCE_END.split(text.strip())]
        if len(sentences) > 1:
            seen: set[str] = set()
            dup = 0
            for s in sentences:
                if s in seen:
                    dup += len(s)
                else:
                    seen.add(s)
            if dup > cfg.max_duplicate_sentence_fraction * n_chars:
                return Defect(kind="repetition",
                              detail=f"repeated sentences are {dup / n_chars:.0%} of the text")
        if len(words) < cfg.repetition_min_words:
            return None
        for n, limit in self._top:
            grams = Counter(zip(*(words[i:] for i in range(n)), strict=False))
            gram, count = grams.most_common(1)[0]
            if count < TOP_NGRAM_MIN_COUNT:
                break  # none is said that often: no longer one is either
            share = _ngram_chars(gram) * count / n_chars
            if share > limit:
                return Defect(kind="repetition", detail=f"{' '.join(gram)!r} is {share:.0%} "
                                                        "of the text")
        for n, limit in self._dup:
            grams = list(zip(*(words[i:] for i in range(n)), strict=False))
            if len(set(grams)) == len(grams):
                break  # nothing repeats at this length, nor at any longer one
            seen_grams: set[tuple[str, ...]] = set()
            repeated, i = 0, 0
            while i < len(grams):  # Gopher: a repeated n-gram's words are counted once
                if grams[i] in seen_grams:
                    repeated += _ngram_chars(grams[i])
                    i += n
                else:
                    seen_grams.add(grams[i])
                    i += 1
            if repeated > limit * n_chars:
                return Defect(kind="repetition", detail=f"repeated {n}-grams are "
                                                        f"{repeated / n_chars:.0%} of the text")
        return None


RETRY_NOTES: dict[str, str] = {
    "empty_answer": "Your previous answer was empty. Give the description asked for.",
    "truncated": "Your previous answer was cut off at the length limit. Answer more briefly, "
                 "within the number of sentences asked for.",
    "runaway": "Your previous answer was far too long. Answer within the number of sentences "
               "asked for.",
    "refusal": "Your previous answer declined to describe. The object is in the image: "
               "describe what is visible of it, even if it is small, dark or partly hidden.",
    "repetition": "Your previous answer repeated itself. Say each thing once.",
    "prompt_leak": "Your previous answer mentioned the yellow marker. Describe the object and "
                   "the scene only; never mention a yellow line, outline, box or highlight.",
    "not_english": "Your previous answer was not plain English prose. Answer in English "
                   "sentences, without lists, markdown, JSON or code.",
    "unparseable_output": "Your previous answer was not the JSON object asked for. Reply with "
                          "that JSON object only.",
}
"""What a retried request adds to its prompt, by what was wrong with the answer before: with
greedy decoding the same request gives the same answer, so a retry must change it."""
