"""Sentence breaks for English SQuAD paragraphs, as LAReQA's training data gets them.

xtreme trains its LAReQA dual encoder on SQuAD v1.1, whose files carry no sentence breaks, and infers
them with the rule-based breaker `third_party/processors/sb_sed.py` (`infer_sentence_breaks`, F1 .996 on
SQuAD). The answer sentence of a question is the inferred sentence that holds `answer_start`, so the
training pairs depend on these exact rules; they are restated here as one ordered table of regular
expression substitutions that insert (or remove) newlines, applied to the paragraph with its own
newlines turned into spaces. XQuAD-R ships its `sentence_breaks` and needs none of this.
"""
from __future__ import annotations

import re
from typing import Iterator

_OPEN_QUOTE, _CLOSE_QUOTE, _BULLET = "\u201c", "\u201d", "\u2022"

# (pattern, replacement) in order; "\n" in a replacement is a break, a space in place of "\n" a rejoin.
_RULES: list[tuple[str, str]] = [
    # The main split: sentence-final punctuation, optional closing quotes/parens/spaces, whitespace, then
    # an optional opening quote/bracket/paren before an upper-case letter or digit. ("\[" inside the
    # class is sb_sed's bare "[", escaped only to keep Python's nested-set warning quiet.)
    (rf"""([.?!][)'" {_CLOSE_QUOTE}]*)\s(\s*[\['"({_OPEN_QUOTE}]?[A-Z0-9])""", r"\1\n\2"),
    # Wikipedia's editorial scraps after the full stop (".[citation needed] ", ".[note 1] "), stacked or not.
    (r"""([.?!]['"]?)((\[[a-zA-Z0-9 ?]+\])+)\s(\s*['"(]?[A-Z0-9])""", r"\1\2\n\4"),
    (r"(\[\.\.\.\]\s*)\s(\[?[A-Z])", r"\1\n\2"),  # an ellipsis inside a quote: "[...] But"
    # Rejoins after abbreviations: titles, literary, months, places, times.
    (r"\b(Mrs?|Ms|Dr|Prof|Fr|Rev|Msgr|Sta?)\.\n", r"\1. "),
    (r"\b(Lt|Gen|Col|Maj|Adm|Capt|Sgt|Rep|Gov|Sen|Pres)\.\n", r"\1. "),
    (r"\b(e\.g|i\.?e|vs?|pp?|cf|a\.k\.a|approx|app|es[pt]|tr)\.\n", r"\1. "),
    (r"\b(Jan|Aug|Oct|Nov|Dec)\.\n", r"\1. "),
    (r"\b(Mt|Ft)\.\n", r"\1. "),
    (r"\b([ap]\.m)\.\n(Eastern|EST)\b", r"\1. \2"),
    # Rejoins for names with three, two or one initials before the surname.
    (r'\b([A-Z]\.)[ \n]([A-Z]\.)[ \n]([A-Z]\.)[ \n]("?[A-Z][a-z])', r"\1 \2 \3 \4"),
    (r'\b([A-Z]\.)[ \n]([A-Z]\.)[ \n]("?[A-Z][a-z])', r"\1 \2 \3"),
    (r'\b([A-Z]\.[A-Z]\.)\n("?[A-Z][a-z])', r"\1 \2"),
    (r'\b([A-Z]\.)\n("?[A-Z][a-z])', r"\1 \2"),
    # Re-splits before common sentence openers.
    (r"""([.!?]['")]*) (The|This|That|These|It) """, r"\1\n\2 "),
    (r"(\.) (Meanwhile|However)", r"\1\n\2"),
    (r"(\.) (In|On|By|During|After|Under|Although|Yet|As |Several|According to) ", r"\1\n\2 "),
    # Rejoins: numbered parts, born/died/circa, "et al. (2005)", "H.R. 2000".
    (r"\b([Aa]rt|[Nn]o|Opp?|ch|Sec|cl|Rec|Ecl|Cor|Lk|Jn|Vol)\.\n([0-9IVX]+)\b", r"\1. \2"),
    (r"\b([bdrc]|ca|fl)\.\n([A-Z0-9])", r"\1. \2"),
    (r"\b(et al)\.\n(\(?[0-9]{4}\b)", r"\1. \2"),
    (r"\b(H\.R\.)\n([0-9])", r"\1 \2"),
    # SQuAD-specific rejoins and splits.
    (r"(I Am\.\.\.)\n(Sasha Fierce|World Tour)", r"\1 \2"),
    (r"(Warner Bros\.)\n(Records|Entertainment)", r"\1 \2"),
    (r"(U\.S\.)\n(\(?\d\d+)", r"\1 \2"),
    (r"\b(Rs\.)\n(\d)", r"\1 \2"),
    (r"\b(Jay Z\.) ([A-Z])", r"\1\n\2"),
    (r"\b(Washington, D\.C\.) ([A-Z])", r"\1\n\2"),
    (r"\b(for 4\.\)) ([A-Z])", r"\1\n\2"),
    (r"\b(Wii U\.) ([A-Z])", r"\1\n\2"),
    (r"\. (iPod|iTunes)", r".\n\1"),
    (r" (\[\.\.\.\]\n)", r"\n\1"),
    (r"(\.Sc\.)\n", r"\1 "),
    (rf" ({_BULLET} [A-Z])", r"\n\1"),
]
_COMPILED = [(re.compile(pattern), replacement) for pattern, replacement in _RULES]


def sentence_breaks(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) character offsets of each sentence of `text`, in order; `text[start:end]` is the
    sentence without its surrounding whitespace. Offsets index the original text (a newline in it is
    one character, turned into a space before the rules run)."""
    marked = text.replace("\n", " ")
    for pattern, replacement in _COMPILED:
        marked = pattern.sub(replacement, marked)
    # Every rule swaps one whitespace character for a newline or back, so offsets are unchanged.
    offset = 0
    for line in marked.split("\n"):
        start = offset + len(line) - len(line.lstrip())
        yield start, start + len(line.strip())
        offset += len(line) + 1
