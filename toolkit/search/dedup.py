"""Near-duplicate detection for research ideas, run BEFORE an idea is implemented, so a GPU job is not paid twice.

An ideator that runs for many epochs re-proposes what it proposed before, reworded: a new title, the same change
in other words, an added rationale. `DuplicateFinder.find(text, earlier)` names the most similar earlier idea of
the same search when its score reaches the method's threshold.

Methods:
  text       no network and no model: TF-IDF cosines of word unigrams, word bigrams and character n-grams (blended),
             over text normalised for ML jargon (lr / learning-rate, warm-up / warmup, wd / weight decay, ...). The
             IDF is fitted on the ideas of the search so far plus the query, so the words every idea of this search
             uses ("learning rate" in a schedule search) weigh little and the words that tell ideas apart weigh much.
  embedding  cosine of vectors from an OpenAI-compatible /v1/embeddings endpoint (`openai_embedder`).

Conflict rules (both methods: embeddings are nearly blind to them): the most alike pairs of different ideas are
twins that change the same knob differently, so a pair that `conflicting` flags has its score multiplied by
CONFLICT_FACTOR, below every threshold: numbers that differ (lr 1e-3 vs 3e-3; compared after canonicalising
1e-3 = 0.001, 5% = 0.05, 1k = 1000, zero = 0), named alternatives that differ (cosine vs linear decay, GELU vs
SwiGLU; increase vs decrease in titles), and twin titles with a swapped or an added word (`Freeze the embeddings`
vs `Freeze the lm head`).

Thresholds favour precision: skipping a genuinely new idea loses it for the whole search, running a duplicate
only costs one job. What the text method cannot see is a paraphrase in other words (`Compile for speed` vs
`torch.compile the model` scores low): it misses such duplicates rather than guess.
"""
from __future__ import annotations

import os
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import openai

from toolkit.errors import ConfigError, ToolkitError

Embedder = Callable[[list[str]], list[list[float]]]

# Text: measured on tests/fixtures/idea_pairs.jsonl, IDF fitted on the whole fixture as one search. Different
# ideas score below 0.35 except a few lexical twins that no threshold short of 0.7 separates; paraphrases score
# 0.05-1. 0.45 keeps a 0.1 margin over the ordinary different pairs (precision 0.98, recall 0.58 there).
TEXT_THRESHOLD = 0.45
# Embedding: not measurable here (no embedding model offline; the fake server's hashed bag of words is no model).
# With OpenAI text-embedding-3 or BGE-style models paraphrases of one idea score about 0.85-0.95 and different
# ideas on one topic 0.7-0.85, so 0.9 errs towards precision. Calibrate per model on the fixture.
EMBEDDING_THRESHOLD = 0.9
THRESHOLDS = {"text": TEXT_THRESHOLD, "embedding": EMBEDDING_THRESHOLD}

CONFLICT_FACTOR = 0.25         # an identical text but for a conflicting value scores 0.25: below both thresholds
TITLE_REPEAT = 2               # the title names the change; the description adds rationale that paraphrases vary
MAX_TITLE_WORDS = 12           # a longer head before the first ":" is a sentence, not a title
CHAR_NGRAMS = (3, 4, 5)
EMBED_BATCH = 128              # inputs per embeddings request (OpenAI allows 2048; local servers may allow fewer)


class DedupError(ToolkitError):
    """The embedder failed (server down, HTTP error, malformed answer): the caller treats it as "no duplicate"."""


@dataclass(frozen=True)
class Match:
    original: str    # id of the earlier idea this one duplicates
    score: float     # similarity in [0, 1]; >= the finder's threshold


# ---- normalisation ------------------------------------------------------------------------------------------

# (regex on lower-cased text, canonical token). One alternation, so at each position the first listed wins:
# specific phrases come before the general ones they contain (wsd before warmup, lm head before head).
_PHRASES: tuple[tuple[str, str], ...] = (
    (r"gpt[\s-]*2", "gpt2"),
    (r"relu\s*(?:\^|\*\*)\s*2|relu²|squared[\s-]*relu|relu[\s-]*squared|relu\(x\)\s*\*\*\s*2", "relu2"),
    (r"swi[\s-]*glu", "swiglu"),
    (r"adam[\s-]*w\b", "adam"),                # LLM text says Adam and AdamW interchangeably
    (r"beta[\s_-]*1\b", "beta1"),
    (r"beta[\s_-]*2\b", "beta2"),
    (r"bfloat[\s-]*16|\bbf[\s-]*16\b", "bf16"),
    (r"float[\s-]*16|half[\s-]*precision|\bfp[\s-]*16\b", "fp16"),
    (r"float[\s-]*8|\bfp[\s-]*8\b", "fp8"),
    (r"float[\s-]*32|full[\s-]*precision|\bfp[\s-]*32\b", "fp32"),
    (r"learning[\s_-]*rates?|\blrs?\b|step[\s-]*size", "lr"),
    (r"warmup[\s-]*stable[\s-]*decay|\bwsd\b|trapezoidal", "wsd"),
    (r"warm(?:ing)?[\s-]*ups?\b", "warmup"),
    (r"cool(?:ing)?[\s-]*downs?\b", "cooldown"),
    (r"rms[\s_-]*norm\w*", "rmsnorm"),
    (r"\bqk[\s_-]*norm\w*|query[\s-]*key[\s-]*norm\w*", "qknorm"),
    (r"pre[\s-]*(?:ln|layer[\s_-]*norm\w*|norm)\b", "prenorm"),
    (r"post[\s-]*(?:ln|layer[\s_-]*norm\w*|norm)\b", "postnorm"),
    (r"layer[\s_-]*norm\w*|\bln\b", "layernorm"),
    (r"weight[\s_-]*decay|\bwd\b|l2[\s-]*(?:regulari[sz]ation|penalty)", "weightdecay"),
    (r"drop[\s-]*out", "dropout"),
    (r"lm[\s_-]*head|unembedding|(?:projection|head)\s+to\s+the\s+vocab\w*", "lmhead"),
    (r"head[\s_-]*(?:dim(?:ension)?|size)", "headdim"),
    (r"attention[\s_-]*heads?|\bn_heads?\b|\bnum_heads\b", "head"),
    (r"batch[\s_-]*sizes?|\bbs\b", "batch"),
    (r"context[\s_-]*(?:length|window|size)|sequence[\s_-]*length|seq[\s_-]*len\w*|block[\s_-]*size|ctx[\s_-]*len\w*",
     "seqlen"),
    (r"(?:embedding|hidden|model)[\s_-]*(?:dim(?:ension)?|size|width)|\bn_embd\b|\bd_model\b|\bwid(?:er|en|th)\b",
     "width"),
    (r"\bn_layers?\b|number of layers|layer count|\bdeeper\b|\bdepth\b", "depth"),
    (r"transformer[\s-]*(?:blocks?|layers?)|\bblocks?\b", "layer"),
    (r"multi[\s-]*layer[\s-]*perceptrons?|feed[\s-]*forward(?:[\s-]*(?:network|layer|block|sublayer)s?)?|\bffn\b"
     r"|\bmlps?\b", "mlp"),
    (r"(?:gradient|grad)s?[\s_-]*(?:norm[\s_-]*)?clip\w*|clip\w*[\s_-]+(?:the[\s_-]+)?(?:global[\s_-]+)?"
     r"(?:gradient|grad)s?(?:[\s_-]*norms?)?|clip_grad_norm_?|max[\s_-]*norm", "gradclip"),
    (r"clip\w*[\s_-]*(?:ratio|range|epsilon|eps|bound)s?", "clipeps"),
    (r"exponential[\s-]*moving[\s-]*averages?|\bema\b", "ema"),
    (r"label[\s-]*smooth\w*|smooth\w*[\s-]+(?:the[\s-]+)?(?:targets|labels)", "labelsmooth"),
    (r"rotary(?:[\s-]*position(?:al)?)?(?:[\s-]*(?:embeddings?|encodings?))?|\brope\b", "rope"),
    (r"(?:absolute[\s-]*)?position(?:al)?[\s-]*(?:embeddings?|encodings?)(?:[\s-]*table)?|\bwpe\b", "posemb"),
    (r"\bunti(?:e|ed|es|ing)\b", "untie"),
    (r"weight[\s-]*tying|\bti(?:e|ed|es|ing)\b", "tie"),
    (r"\bkl(?:[\s-]*(?:divergence|penalty|coefficient|coef|term|loss))?\b", "kl"),
    (r"group[\s_-]*size|(?:completions|samples|rollouts|generations|responses|answers)[\s-]+per[\s-]+"
     r"(?:prompt|question|problem)|num_generations", "groupsize"),
    (r"max(?:imum)?[\s_-]*(?:new[\s_-]*)?tokens|(?:max(?:imum)?[\s_-]*)?(?:completion|generation|response)[\s_-]*"
     r"length|max_completion_length", "genlen"),
    (r"standard[\s-]*deviation|\bstd\b", "std"),
    (r"torch\.compile|torch[\s_-]*compile", "compile"),
    (r"flash[\s_-]*(?:attention|attn)|scaled_dot_product_attention|\bsdpa\b", "flashattn"),
    (r"flex[\s_-]*attention", "flexattn"),
    (r"sliding[\s-]*windows?|windowed[\s-]*attention|local[\s-]*attention", "slidewindow"),
    (r"soft[\s_-]*cap\w*|logit[\s_-]*cap\w*|tanh[\s-]*cap\w*", "softcap"),
    (r"\bz[\s_-]*loss", "zloss"),
    (r"grad(?:ient)?[\s_-]*accum\w*|accumulat\w*[\s-]+gradients", "gradaccum"),
    (r"skip[\s-]*connections?", "skipconnection"),
    (r"char(?:acter)?[\s-]*level", "charlevel"),
    (r"token[\s-]*level", "tokenlevel"),
    (r"(?:sequence|sample)[\s-]*level", "sequencelevel"),
    (r"cross[\s-]*entropy", "crossentropy"),
    (r"one[\s-]*hot", "onehot"),
    (r"initiali[sz]\w*|\binit\b", "init"),
    (r"\bzero\b", "0"),                       # a value like any other: "decay to zero" vs "decay to 10%"
)
# Tried only where a word starts (every phrase starts with a letter): four times faster than at every position.
_PHRASE_RE = re.compile(r"\b(?=[a-z])(?:" + "|".join(f"(?P<p{i}>{p})" for i, (p, _) in enumerate(_PHRASES)) + ")")

# After stemming: one word for the many ways an LLM says "make it bigger", "take it out", "the samples".
_STEM_SYNONYMS = {
    **dict.fromkeys(("increas", "rais", "higher", "larger", "bigger", "boost", "more", "grow", "doubl", "longer",
                     "lengthen", "extend"), "increas"),
    **dict.fromkeys(("decreas", "reduc", "lower", "smaller", "less", "fewer", "shrink", "halv", "shorter",
                     "shorten"), "decreas"),
    **dict.fromkeys(("remov", "drop", "disabl", "elimin", "without", "no", "delet"), "remov"),
    **dict.fromkeys(("add", "introduc", "insert", "enabl"), "add"),
    **dict.fromkeys(("complet", "rollout", "respons"), "rollout"),
    **dict.fromkeys(("prompt", "question", "problem"), "prompt"),
    "queri": "query", "q": "query", "k": "key", "v": "valu", "iter": "step", "param": "parameter",
    "matric": "matrix", "anneal": "decay", "flat": "constant", "normaliz": "norm",
    "penaliz": "penalty", "optimizer": "optimiz",
}

_STOP_WORDS = frozenset("""
a an the of to in on at by for from with and or but as is are be been being was were it its this that these those
we our us you your they them their so since because which who whom whose than then there here each every all any
some both either such into onto over under after before during while when where how what can could should would
will may might must do does did done has have had not only also just very much many most other via per up out off
about around between through let lets make makes making get gets give gives set sets setting use uses used using
apply applies applied try switch swap replace replaced replacing instead rather keep keeping kept current
currently default existing model models
idea propose improve improves better help helps e g i etc like following follow recent work find finds found see
tend tends suggest suggests allow allows one
""".split())  # noqa: SIM905 (a word list reads best as text)

_NUMBER_SCALE = {"": 1.0, "%": 0.01, "k": 1e3, "m": 1e6, "b": 1e9, "x": 1.0}
# A number: not inside a word (fp8, beta2, 2d), with an optional unit (5%, 1k, 124m, 4x).
_TOKEN_RE = re.compile(r"(?P<num>(?<![\w.])(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?)(?:\s*(?P<unit>%|[kmbx]\b))?(?![a-z_])"
                       r"|(?P<word>\d*[a-z][a-z0-9]*)")
_BRITISH_IZ = re.compile(r"(?<=[a-z]{3})is(?=(?:e|ed|es|ing|ation|ations)$)")
_PLURALS = (("sses", "ss"), ("ies", "y"), ("ss", "ss"), ("us", "us"), ("is", "is"), ("as", "as"), ("s", ""), ("", ""))
_ENDINGS = (("ation", 3), ("ing", 4), ("ed", 4), ("ly", 4))   # (suffix, shortest stem left)


def _canonical_phrases(text: str) -> str:
    """Lower-case text with each known ML phrase replaced by one canonical token (learning-rate -> lr)."""
    text = unicodedata.normalize("NFKC", text).lower().replace("β", "beta")
    return _PHRASE_RE.sub(lambda m: f" {_PHRASES[int(m.lastgroup[1:])][1]} ", text)   # type: ignore[index]


def _number(digits: str, unit: str | None) -> str:
    """A number as a canonical string, so 1e-3, 0.001 and 0.1% compare equal and 5% equals 0.05."""
    return f"{float(digits) * _NUMBER_SCALE[unit or '']:.4g}"


def _stem(word: str) -> str:
    """Light suffix stripping (a Porter step-1 subset): meets schedule/schedules/scheduling without the
    surprises of a full stemmer on ML jargon. Errors are harmless as long as both texts get the same ones."""
    word = _BRITISH_IZ.sub("iz", word)
    suffix, replacement = next((s, r) for s, r in _PLURALS if word.endswith(s))
    if suffix and len(word) - len(suffix) >= 2:
        word = word[:-len(suffix)] + replacement
    for suffix, shortest in _ENDINGS:
        if word.endswith(suffix) and len(word) - len(suffix) >= shortest:
            word = word[:-len(suffix)]
            break
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouslz":
        word = word[:-1]                       # clipp -> clip, embedd -> embed
    return word[:-1] if len(word) > 4 and word.endswith("e") else word


@lru_cache(maxsize=1 << 16)
def _word_token(word: str) -> str | None:
    """The canonical token of one word, or None for a stop word (cached: a search reuses its vocabulary)."""
    if word in _STOP_WORDS:
        return None
    stem = _stem(word)
    return _STEM_SYNONYMS.get(stem, stem)


def canonical_tokens(text: str) -> list[str]:
    """Canonical tokens in order: stemmed words without stop words, and numbers as `#value`."""
    out: list[str] = []
    for m in _TOKEN_RE.finditer(_canonical_phrases(text)):
        token = "#" + _number(m["num"], m["unit"]) if m["num"] else _word_token(m["word"])
        if token is not None:
            out.append(token)
    return out


# Mutually exclusive choices, by slot. Two ideas that each name a choice the other lacks in one slot change the
# same thing in different ways (cosine vs linear decay, GELU vs SwiGLU, tie vs untie): two ideas.
_ALTERNATIVES = {
    "schedule": "cosine linear constant exponential wsd",
    "activation": "gelu relu relu^2 swiglu geglu silu swish",
    "norm": "layernorm rmsnorm",
    "norm placement": "pre-ln post-ln",
    "optimizer": "adam sgd lion muon sophia adafactor shampoo soap",
    "position": "rope alibi nope position-embeddings",
    "precision": "bf16 fp16 fp8 fp32",
    "tying": "tie untie",
    "granularity": "token-level sequence-level",
}
# Read in the title only: a description's rationale says "lower the loss", "no extra cost" or "training" whichever
# way the idea turns the knob, but a title's "Increase batch size" vs "Decrease batch size" is the idea itself.
_TITLE_ALTERNATIVES = {
    "direction": "increase decrease",
    "presence": "add remove",
    "phase": "train evaluate inference",
}


def _slots(alternatives: dict[str, str]) -> dict[str, str]:
    return {token: slot for slot, words in alternatives.items() for token in canonical_tokens(words)}


_SLOT_OF, _TITLE_SLOT_OF = _slots(_ALTERNATIVES), _slots(_TITLE_ALTERNATIVES)


def _values(title: list[str], body: list[str]) -> frozenset[tuple[str, str]]:
    """The (slot, value) pairs an idea states: every number (one slot: which knob it sets is unknown), every named
    alternative of _ALTERNATIVES, and in the title those of _TITLE_ALTERNATIVES."""
    found = {("number", t[1:]) for t in title + body if t.startswith("#")}
    found |= {(_SLOT_OF[t], t) for t in title + body if t in _SLOT_OF}
    return frozenset(found | {(_TITLE_SLOT_OF[t], t) for t in title if t in _TITLE_SLOT_OF})


@dataclass(frozen=True)
class Facts:
    """What an idea states, for the conflict rules."""
    values: frozenset[tuple[str, str]]
    title: frozenset[str]      # title words, numbers left to `values`
    words: frozenset[str]      # every word of title and description


def facts(text: str) -> Facts:
    """The conflict-relevant content of one idea text (what the finder caches per text)."""
    return _facts(*(canonical_tokens(part) for part in _split_title(text)))


def _facts(title: list[str], body: list[str]) -> Facts:
    title_words = frozenset(t for t in title if not t.startswith("#"))
    return Facts(_values(title, body), title_words, title_words | {t for t in body if not t.startswith("#")})


def conflicting(a: Facts, b: Facts) -> bool:
    """Two different ideas, however alike their words: in some slot each side states a value the other does not
    (lr 1e-3 vs 3e-3; cosine vs linear decay), or their titles are twins with a swapped word (`Freeze the
    embeddings` vs `Freeze the lm head`), or one title is the other's plus a word that idea never uses (`Increase
    width` vs `Increase width and depth`). A description merely adding a value (`from 6 to 12 layers` vs `12 layers`)
    is no conflict."""
    return _values_conflict(a.values, b.values) or _title_swap(a, b) or _title_extends(a, b) or _title_extends(b, a)


def _values_conflict(a: frozenset[tuple[str, str]], b: frozenset[tuple[str, str]]) -> bool:
    return bool({slot for slot, _ in a - b} & {slot for slot, _ in b - a})


def _title_extends(a: Facts, b: Facts) -> bool:
    """b's title holds all of a's and a word that a never uses: b is a more specific or a combined idea."""
    return bool(a.title) and a.title <= b.title and bool(b.title - a.words - _TITLE_SLOT_OF.keys())


def _title_swap(a: Facts, b: Facts) -> bool:
    """The titles share a word (one topic) and each has a word the other idea never uses (a different change).
    Paraphrases' titles rarely share a word and differ by an absent one: a reworded title uses other words
    throughout, and a shared-topic title's remaining words are usually found in the other description."""
    return bool(a.title & b.title) and bool(a.title - b.words - _TITLE_SLOT_OF.keys()) \
        and bool(b.title - a.words - _TITLE_SLOT_OF.keys())


def _split_title(text: str) -> tuple[str, str]:
    """("Title", "description") of the ideator's "Title: description"; ("", text) when there is no short title."""
    head, sep, tail = text.partition(":")
    return (head, tail) if sep and 0 < len(head.split()) <= MAX_TITLE_WORDS and "\n" not in head else ("", text)


def _unigrams(parts: list[list[str]]) -> Counter[str]:
    return Counter(t for toks in parts for t in toks)


def _bigrams(parts: list[list[str]]) -> Counter[str]:
    """Word pairs within each part (none spans the title/description seam): `std normaliz` vs `length normaliz`."""
    return Counter(f"{a} {b}" for toks in parts for a, b in zip(toks, toks[1:]))


def _char_features(parts: list[list[str]]) -> Counter[str]:
    """Character n-grams inside each word (not numbers: 1e-3 and 3e-3 share n-grams but no meaning)."""
    return Counter(gram for toks in parts for t in toks if not t.startswith("#") for gram in _char_grams(t))


@lru_cache(maxsize=1 << 16)
def _char_grams(token: str) -> tuple[str, ...]:
    padded = f" {token} "
    return tuple(padded[i:i + n] for n in CHAR_NGRAMS for i in range(len(padded) - n + 1))


# Text method: (features, weight of their cosine). Words carry the meaning; bigrams tell `std normalisation` from
# `length normalisation`; character n-grams meet what stemming missed (regularizer/regularize, value/values).
_SPACES: tuple[tuple[Callable[[list[list[str]]], Counter[str]], float], ...] = (
    (_unigrams, 0.6), (_bigrams, 0.1), (_char_features, 0.3))


# ---- vectors --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Sparse:
    idx: np.ndarray   # vocabulary ids, unique
    tf: np.ndarray    # sublinear term frequency 1 + log(count): a repeated word is evidence, not ten times as much


@dataclass(frozen=True)
class _Doc:
    spaces: tuple[_Sparse, ...]     # one sparse vector per feature space of _SPACES
    facts: Facts


class _Vocab:
    """Term -> id, growing as ideas arrive; ids index the IDF arrays."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def sparse(self, counts: Counter[str]) -> _Sparse:
        idx = np.fromiter((self.ids.setdefault(t, len(self.ids)) for t in counts), dtype=np.int64, count=len(counts))
        tf = 1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
        return _Sparse(idx, tf)


def _cosines(query: _Sparse, docs: Sequence[_Sparse], size: int) -> np.ndarray:
    """TF-IDF cosine of the query with each doc, the smoothed IDF fitted on docs + query (as scikit-learn's)."""
    idx = np.concatenate([d.idx for d in docs] + [query.idx])
    owner = np.repeat(np.arange(len(docs) + 1), [len(d.idx) for d in docs] + [len(query.idx)])
    idf = np.log((len(docs) + 2) / (np.bincount(idx, minlength=size) + 1.0)) + 1.0
    weights = np.concatenate([d.tf for d in docs] + [query.tf]) * idf[idx]
    q = np.zeros(size)
    q[query.idx] = query.tf * idf[query.idx]
    dots = np.bincount(owner, weights=weights * q[idx], minlength=len(docs) + 1)[:-1]
    norms = np.sqrt(np.bincount(owner, weights=weights * weights, minlength=len(docs) + 1))
    denominators = norms[:-1] * norms[-1]
    return np.divide(dots, denominators, out=np.zeros(len(docs)), where=denominators > 0)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _as_matrix(vectors: Sequence[Sequence[float]], rows: int) -> np.ndarray:
    """The embedder's answer as a finite rows x dim matrix, else DedupError (a wrong answer is a failure too)."""
    try:
        matrix = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DedupError(f"embedder returned ragged or non-numeric vectors: {e}") from e
    if matrix.ndim != 2 or matrix.shape[0] != rows or not np.isfinite(matrix).all():
        raise DedupError(f"embedder returned {matrix.shape} values for {rows} texts (want one finite vector each)")
    return matrix


# ---- the finder -----------------------------------------------------------------------------------------------

class DuplicateFinder:
    """Scores a new idea against the earlier ideas of a search. Keeps per-text analyses (and, through the
    embedder, vectors), so a long-lived finder pays for each idea once. Thread-safe."""

    def __init__(self, method: str = "text", threshold: float | None = None, embed: Embedder | None = None) -> None:
        if method not in THRESHOLDS:
            raise ConfigError(f"dedup method {method!r} is unknown: use one of {sorted(THRESHOLDS)}")
        if method == "embedding" and embed is None:
            raise ConfigError("dedup method 'embedding' needs an embedder (toolkit.search.dedup.openai_embedder)")
        self.method = method
        self.threshold = THRESHOLDS[method] if threshold is None else threshold
        self._embed = embed
        self._vocabs = tuple(_Vocab() for _ in _SPACES)
        self._docs: dict[str, _Doc] = {}
        self._lock = threading.Lock()

    def find(self, text: str, earlier: list[tuple[str, str]]) -> Match | None:
        """The earlier (idea_id, text) most similar to `text`, if its score reaches the threshold.
        The embedding method raises DedupError when the embedder fails."""
        scores = self.scores(text, earlier)
        if not len(scores):
            return None
        best = int(np.argmax(scores))
        return Match(earlier[best][0], float(scores[best])) if scores[best] >= self.threshold else None

    def scores(self, text: str, earlier: Sequence[tuple[str, str]]) -> np.ndarray:
        """Similarity in [0, 1] of `text` to each earlier idea, in order, conflict rules applied."""
        if not earlier:
            return np.zeros(0)
        texts = [t for _, t in earlier]
        with self._lock:
            query, docs = self._doc(text), [self._doc(t) for t in texts]
            sizes = [len(v.ids) for v in self._vocabs]
        raw = self._text_scores(query, docs, sizes) if self.method == "text" else self._embedding_scores(text, texts)
        factors = [CONFLICT_FACTOR if conflicting(query.facts, d.facts) else 1.0 for d in docs]
        return np.clip(raw, 0.0, 1.0) * np.asarray(factors)

    def _doc(self, text: str) -> _Doc:
        """The cached analysis of one text (caller holds the lock: the vocabularies grow)."""
        if text not in self._docs:
            title, body = (canonical_tokens(part) for part in _split_title(text))
            parts = [title] * TITLE_REPEAT + [body]
            spaces = tuple(vocab.sparse(features(parts)) for vocab, (features, _) in zip(self._vocabs, _SPACES))
            self._docs[text] = _Doc(spaces, _facts(title, body))
        return self._docs[text]

    @staticmethod
    def _text_scores(query: _Doc, docs: list[_Doc], sizes: list[int]) -> np.ndarray:
        """The weighted mean of the cosines in each feature space."""
        return sum((weight * _cosines(query.spaces[k], [d.spaces[k] for d in docs], sizes[k])
                    for k, (_, weight) in enumerate(_SPACES)), np.zeros(len(docs)))

    def _embedding_scores(self, text: str, texts: list[str]) -> np.ndarray:
        """Cosine of embeddings. Blank texts are not sent (embedding APIs reject empty input) and score 0."""
        scores = np.zeros(len(texts))
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if not text.strip() or not keep:
            return scores
        assert self._embed is not None
        unit = _unit_rows(_as_matrix(self._embed([text, *(texts[i] for i in keep)]), len(keep) + 1))
        scores[keep] = unit[1:] @ unit[0]
        return scores


# ---- embeddings over the OpenAI API ---------------------------------------------------------------------------

def openai_embedder(base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 60,
                    max_retries: int = 2) -> Embedder:
    """An embedder over any OpenAI-compatible /v1/embeddings (OpenAI, vLLM --task embed, TEI, llama.cpp).
    Vectors are cached per text for the embedder's life (one vector per distinct idea: a search's worth is a few
    MB), so each idea is embedded once per search. Every failure, including a missing API key, is a DedupError."""
    key = os.environ.get(api_key_env, "")
    if not key:
        raise DedupError(f"the embeddings endpoint {base_url} needs an API key in ${api_key_env} "
                         f"(export it, or name another variable; any non-empty value for a local server)")
    client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout_s, max_retries=max_retries)
    cache: dict[str, list[float]] = {}

    def embed(texts: list[str]) -> list[list[float]]:
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        for start in range(0, len(missing), EMBED_BATCH):
            chunk = missing[start:start + EMBED_BATCH]
            cache.update(zip(chunk, _embed_once(client, model, chunk)))
        return [cache[t] for t in texts]
    return embed


def _embed_once(client: openai.OpenAI, model: str, texts: list[str]) -> list[list[float]]:
    """One embeddings request; the SDK's errors (HTTP status, connection, time-out, empty answer) -> DedupError."""
    try:
        response = client.embeddings.create(model=model, input=texts)
    except (openai.OpenAIError, ValueError) as e:
        raise DedupError(f"embeddings request to {client.base_url} (model {model!r}) failed: "
                         f"{type(e).__name__}: {e}") from e
    data = sorted(response.data or [], key=lambda item: item.index)
    if [item.index for item in data] != list(range(len(texts))):
        raise DedupError(f"embeddings from {client.base_url} answered {len(data)} vectors for {len(texts)} texts")
    return [list(item.embedding) for item in data]
