"""The portal's download-password check takes as long for a guess that is right but for its last
character as for one wrong from the first: nothing to learn from timing it one character at a
time. The check is the one the password POST runs (gateway/web/portal.py, LandingRoutes):
`verify_password` against the keyed hash the store step made (gateway/store/passwords.py).

Timed on a shared, noisy machine: the two guesses are interleaved in random order, each sample a
batch of calls, and only the medians of many samples are compared."""

from __future__ import annotations

import gc
import random
import statistics
import time

from gateway.store.keys import DOWNLOAD_PASSWORD_KEY, derive_key
from gateway.store.passwords import (
    PASSWORD_ALPHABET,
    generate_password,
    hash_generated_password,
    verify_password,
)

KEY = derive_key(bytes(range(32)), DOWNLOAD_PASSWORD_KEY)
ROUNDS = 300
CALLS_PER_SAMPLE = 40
# The medians of two guesses that take the same work stay well within this on a busy 2-core
# machine; a check that stops at the first differing character, at any cost per character
# a network could see, is far outside it.
TOLERANCE = 0.10


def other_character(char: str) -> str:
    return PASSWORD_ALPHABET[(PASSWORD_ALPHABET.index(char) + 1) % len(PASSWORD_ALPHABET)]


def per_call_seconds(guess: str, stored: str) -> float:
    started = time.perf_counter()
    for _ in range(CALLS_PER_SAMPLE):
        assert not verify_password(guess, stored, KEY)
    return (time.perf_counter() - started) / CALLS_PER_SAMPLE


def test_a_wrong_password_is_refused_in_the_same_time_however_many_leading_characters_match():
    password = generate_password(12)
    stored = hash_generated_password(password, KEY)
    assert verify_password(password, stored, KEY)
    guesses = {
        "all wrong": "".join(other_character(char) for char in password),
        "all but the last right": password[:-1] + other_character(password[-1]),
    }
    samples: dict[str, list[float]] = {name: [] for name in guesses}
    order = list(guesses)
    shuffle = random.Random(11).shuffle
    gc.disable()  # a collection inside one sample would be noise, not signal
    try:
        for _ in range(ROUNDS):
            shuffle(order)
            for name in order:
                samples[name].append(per_call_seconds(guesses[name], stored))
    finally:
        gc.enable()

    medians = {name: statistics.median(times) for name, times in samples.items()}
    ratio = medians["all but the last right"] / medians["all wrong"]
    assert 1 - TOLERANCE < ratio < 1 + TOLERANCE, (
        f"refusing took {medians['all but the last right'] * 1e6:.1f} µs with 11 of 12 "
        f"characters right, {medians['all wrong'] * 1e6:.1f} µs with none right")
