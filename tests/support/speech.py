"""Speech made in the test (espeak-ng), and how a transcript is judged to hold the same words.

"The same words" allows a small word error rate (WORD_ERROR_RATE, after lower-casing and dropping punctuation):
Whisper tiny.en is the smallest Whisper and espeak-ng's robotic voice is far from the speech it was trained on,
so a word may come back misheard ("The weather is nice today" came back as "But when there is ice today" when
this was written; SENTENCE comes back exactly).
"""
from __future__ import annotations

import re
import subprocess

SENTENCE = "Please close the door behind you. We will meet again next week."
WORD_ERROR_RATE = 0.2


def espeak(text: str, path) -> bytes:
    """`text` spoken by espeak-ng (American English, a little slower than its default) as a WAV file."""
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-g", "3", "-w", str(path), text], check=True)
    return path.read_bytes()


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance over the reference's length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)] / len(ref)


def assert_same_words(reference: str, hypothesis: str) -> None:
    rate = word_error_rate(reference, hypothesis)
    assert rate <= WORD_ERROR_RATE, f"{hypothesis!r} is {rate:.0%} words away from {reference!r}"
