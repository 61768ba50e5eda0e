"""Road-work lexicon and OCR-error-tolerant matching.

The phrases live in ``roadwork_lexicon.yaml`` (language -> strong / weak phrases). Text read by OCR
is normalised (upper case, accents and punctuation dropped, digits that OCR confuses with letters
mapped back) and compared with each phrase with spaces removed, so "ROADWORK", "ROAD WORK" and
"R0AD W0RK" all match "ROAD WORK". Long phrases may match anywhere inside the text (approximate
substring match: the edit distance to the best substring), short ones only a whole word, so
"OBRAS" does not fire inside "COBRASTREET".
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

__all__ = ["Phrase", "LexiconMatch", "Lexicon", "normalise_text", "substring_distance", "load_lexicon"]

_DEFAULT_PATH = Path(__file__).with_name("roadwork_lexicon.yaml")
# Digits OCR reads for letters on sign fonts. Applied only inside words that have letters, so a
# speed limit "50" stays "50".
_DIGIT_AS_LETTER = str.maketrans({"0": "O", "1": "I", "5": "S", "8": "B", "6": "G", "2": "Z", "4": "A", "7": "T"})
# Phrases (spaces removed) this short or shorter must match a whole word.
_WORD_ONLY_MAX_LEN = 6


@dataclass(frozen=True)
class Phrase:
    """A lexicon entry.

    Attributes:
        text: the phrase as written in the lexicon.
        key: normalised, spaces removed (what is compared).
        language: ISO 639-1 code of the section it came from.
        strong: True when it says road work on its own.
    """

    text: str
    key: str
    language: str
    strong: bool


@dataclass(frozen=True)
class LexiconMatch:
    """The best lexicon phrase found in a text.

    Attributes:
        phrase: the matched entry.
        score: 1 - edits / phrase length, in (0, 1].
        text: the normalised text it was found in.
    """

    phrase: Phrase
    score: float
    text: str


def normalise_text(text: str) -> str:
    """Upper case, accents and punctuation removed, letter-like digits in words mapped to letters.

    Examples:
        >>> normalise_text("Déviation — R0AD w0rk!  50")
        'DEVIATION ROAD WORK 50'
    """
    decomposed = unicodedata.normalize("NFKD", text.upper().replace("ß", "SS"))
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    words = "".join(c if c.isalnum() else " " for c in plain).split()
    return " ".join(w.translate(_DIGIT_AS_LETTER) if any(c.isalpha() for c in w) else w for w in words)


def substring_distance(pattern: str, text: str) -> int:
    """Fewest edits turning ``pattern`` into some substring of ``text`` (Sellers' algorithm).

    Examples:
        >>> substring_distance("ROADWORK", "XXROADW0RKYY")
        1
        >>> substring_distance("ABC", "")
        3
    """
    prev = [0] * (len(text) + 1)  # a match may start anywhere in text: row 0 is all zeros
    for i, pc in enumerate(pattern, 1):
        cur = [i] + [0] * len(text)
        for j, tc in enumerate(text, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (pc != tc))
        prev = cur
    return min(prev)


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ac in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, bc in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ac != bc))
        prev = cur
    return prev[-1]


def _allowed_edits(n: int) -> int:
    # About one error per five characters; none up to six, where real words sit one edit apart
    # ("LAVORO" / "LAVORI"); the digit-for-letter mapping already covers OCR's usual slips there.
    return 0 if n <= 6 else 1 if n <= 9 else 2 if n <= 14 else 3


def _word_windows(words: list[str], max_words: int) -> list[str]:
    # Runs of 1..max_words consecutive words, joined: "F00 BAR" -> FOO, BAR, FOOBAR.
    return [
        "".join(words[i:i + k]) for k in range(1, max_words + 1) for i in range(len(words) - k + 1)
    ] or [""]


class Lexicon:
    """Phrases by language with fuzzy matching.

    Args:
        phrases: the entries.
    """

    def __init__(self, phrases: list[Phrase]) -> None:
        if not phrases:
            raise ValueError("Lexicon: expected at least one phrase, got none")
        self.phrases = phrases
        self._grams = [_bigrams(p.key) for p in phrases]

    @property
    def languages(self) -> list[str]:
        return sorted({p.language for p in self.phrases})

    def match(self, text: str, *, languages: list[str] | None = None) -> LexiconMatch | None:
        """The best phrase found in ``text``: strong before weak, then most characters matched.

        Examples:
            >>> lex = load_lexicon()
            >>> lex.match("R0AD W0RK AHEAO").phrase.text
            'ROAD WORK AHEAD'
            >>> lex.match("MAIN STREET") is None
            True
        """
        norm = normalise_text(text)
        flat = norm.replace(" ", "")
        if len(flat) < 3:
            return None
        words = norm.split()
        grams = _bigrams(flat)
        best: LexiconMatch | None = None
        for phrase, pg in zip(self.phrases, self._grams):
            if languages and phrase.language not in languages:
                continue
            n = len(phrase.key)
            # Cheap filter: a phrase sharing few letter pairs with the text cannot be within budget.
            if pg and len(pg & grams) < len(pg) - 2 * _allowed_edits(n) - 1:
                continue
            if n <= _WORD_ONLY_MAX_LEN:
                d = min(_edit_distance(phrase.key, w) for w in _word_windows(words, phrase.text.count(" ") + 2))
            else:
                d = substring_distance(phrase.key, flat)
            if d > _allowed_edits(n):
                continue
            score = 1.0 - d / n
            cand = LexiconMatch(phrase, score, norm)
            # Strong phrases first, then the most characters matched (longest phrase, fewest edits).
            if best is None or (phrase.strong, n - d) > (best.phrase.strong, _matched(best)):
                best = cand
        return best


def _matched(m: LexiconMatch) -> float:
    return len(m.phrase.key) * m.score


def _bigrams(s: str) -> set[str]:
    return {s[i:i + 2] for i in range(len(s) - 1)}


@lru_cache(maxsize=8)
def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """Load a lexicon YAML file (default: the shipped ``roadwork_lexicon.yaml``).

    The file maps a language code to ``{strong: [...], weak: [...]}``.

    Raises:
        ValueError: the file does not have that shape.
    """
    p = Path(path) if path else _DEFAULT_PATH
    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of language -> {{strong, weak}}, got {type(data).__name__}")
    phrases = []
    for lang, groups in data.items():
        if not isinstance(groups, dict) or not set(groups) <= {"strong", "weak"}:
            raise ValueError(f"{p}: language {lang!r}: expected keys strong/weak, got {groups!r}")
        for strength, items in groups.items():
            for item in items or []:
                key = normalise_text(str(item)).replace(" ", "")
                if key:
                    phrases.append(Phrase(str(item), key, str(lang), strength == "strong"))
    return Lexicon(phrases)
