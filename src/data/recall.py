"""Recall episodes woven into a filler corpus: text whose answer lies far back, so that a sliding window must fail
(``data=recall``; the filler is any other corpus, ``data.filler``).

Three tasks, character-level, in the filler's alphabet plus what the templates need (``ALPHABET``):

* ``passkey`` -- Landmark Attention's test, as Quest and many others reuse it: "The pass key is 48213. Remember it.
  48213 is the pass key." at some depth of the filler, and at the end "What is the pass key? The pass key is 48213.";
* ``multikey`` -- RULER's NIAH multikey: ``pairs`` needles "The magic number for tovel is 732981." scattered through
  the filler, one of them asked at the end;
* ``mqar`` -- Zoology's multi-query associative recall with multi-character keys and values, as RULER writes it for
  characters: a list of ``pairs`` pairs "tov:732" at some depth, and at the end ``queries`` of its keys, each
  followed by its value.

An episode ends its window with the question and the answer(s); the asked needle sits at a depth -- a fraction of the
text before the question -- drawn uniformly for training (``data.depth_power`` skews it back), so that most answers
lie beyond a window of T/8 (Zoology's power-law gaps would put half of them within 256 characters at T = 2048), and
at fixed depths for the test set, a seeded set of episodes woven into the test split's text.

Training text of two kinds teach the model to look back at all, which a small character model on a CPU budget does
not learn from the episodes alone (the answers are a few characters in thousands): ``repeat_passages`` writes
passages of random characters into the filler and repeats each later on (only copying predicts a repeat), and
``periodic`` is a short window of a random string repeated with a random period (Olsson et al.'s repeated random
tokens), the induction warm-up's text; a share of the repeated passages may be the filler's own text. A third,
``dictionary``, drills the key match the multi-key needle and associative recall need: a window of key-value items
drawn from a few keys defined in it, every repeated item an answer.
``copy_windows`` builds the copy probe's windows: a passage and, ``gap`` characters after it, the same passage again
(Olsson et al.'s in-context learning score reads the loss on its second appearance against its first).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TASKS = ("passkey", "multikey", "mqar")
DIGITS, LETTERS = "0123456789", "abcdefghijklmnopqrstuvwxyz"
ALPHABET = frozenset(DIGITS + LETTERS + "TWR .:?")  # every character an episode writes (templates, keys, values)
VALUE = {"passkey": 5, "multikey": 6, "mqar": 3}  # digits of each task's values (keys: mqar 3 letters, multikey 5)


@dataclass(frozen=True)
class Episode:
    """One window's text with an episode woven in: the answers are the characters to recall."""

    text: str  # exactly the window's length
    task: str
    depth: float  # where the asked needle sits: a fraction of the text before the question
    answers: tuple[tuple[int, int], ...]  # [start, end) of each answer in text
    needles: tuple[int, ...]  # where each answer's value was first written in text (its needle)

    @property
    def distances(self) -> tuple[int, ...]:
        """Characters from each needle to its answer: how far back a query must read."""
        return tuple(a - n for (a, _), n in zip(self.answers, self.needles))


def number(rng: random.Random, n: int) -> str:
    return str(rng.randrange(10 ** (n - 1), 10**n))


def word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(n))


def distinct(rng: random.Random, make, count: int) -> list[str]:
    found: list[str] = []
    while len(found) < count:
        w = make()
        if w not in found:
            found.append(w)
    return found


def place(rng: random.Random, room: int, lengths: list[int], first: int) -> list[int]:
    """Start positions in [0, room) of pieces of ``lengths`` that do not overlap: the first at ``first``, each other
    one in the free text before or after it (the larger free part the likelier), at a uniformly drawn offset among
    the pieces there. ValueError when they do not fit."""
    regions = [(0, first, []), (first + lengths[0], room, [])]  # (start, end, the pieces placed in it)
    free = lambda r: r[1] - r[0] - sum(lengths[j] for j in r[2])  # noqa: E731
    for i in sorted(range(1, len(lengths)), key=lambda i: -lengths[i]):  # the longest first
        fits = [r for r in regions if free(r) >= lengths[i]]
        if not fits:
            raise ValueError(f"{len(lengths)} needles do not fit in {room} characters: give fewer data.pairs or a "
                             "longer model.seq_len")
        rng.choices(fits, weights=[free(r) for r in fits])[0][2].append(i)
    starts = [first] + [0] * (len(lengths) - 1)
    for lo, _, pieces in regions:
        rng.shuffle(pieces)
        slack = free((lo, _, pieces))
        used = 0
        for cut, j in zip(sorted(rng.randint(0, slack) for _ in pieces), pieces):
            starts[j], used = lo + cut + used, used + lengths[j]
    return starts


def episode(task: str, rng: random.Random, filler: str, depth: float, pairs: int = 4, queries: int = 2) -> Episode:
    """An episode of ``task`` woven into ``filler`` (its length is kept): the asked needle at ``depth`` of the text
    before the question, the question and its answer(s) ending the text."""
    # needles: (text, [where each value starts in it]); asked: (needle, value) of each answer, in the tail's order
    if task == "passkey":
        key = number(rng, 5)
        needles = [(f" The pass key is {key}. Remember it. {key} is the pass key. ", [len(" The pass key is ")])]
        asked, tail = [(0, 0)], f" What is the pass key? The pass key is {key}."
    elif task == "multikey":
        keys = distinct(rng, lambda: word(rng, 5), pairs)
        values = [number(rng, 6) for _ in keys]
        ask = rng.randrange(pairs)
        order = [ask] + [i for i in range(pairs) if i != ask]  # the asked needle first: it goes at the depth
        needles = [(f" The magic number for {keys[i]} is {values[i]}. ", [len(f" The magic number for {keys[i]} is ")])
                   for i in order]
        asked = [(0, 0)]
        tail = f" What is the magic number for {keys[ask]}? The magic number for {keys[ask]} is {values[ask]}."
    elif task == "mqar":
        keys = distinct(rng, lambda: word(rng, 3), pairs)
        values = [number(rng, 3) for _ in keys]
        items = [f"{k}:{v}" for k, v in zip(keys, values)]
        needles = [(" " + " ".join(items) + " ", [1 + 8 * i + 4 for i in range(pairs)])]  # "key:val " is 8 long
        picks = rng.sample(range(pairs), queries)
        asked = [(0, i) for i in picks]
        tail = " " + " ".join(items[i] for i in picks) + "."
    else:
        raise ValueError(f"data.tasks: {task!r} is unknown: use some of {', '.join(TASKS)}")
    room = len(filler) - len(tail)
    lengths = [len(text) for text, _ in needles]
    if sum(lengths) > room:
        raise ValueError(f"a {task} episode ({sum(lengths) + len(tail)} characters) does not fit in "
                         f"{len(filler)}: give a longer model.seq_len or fewer data.pairs")
    starts = place(rng, room, lengths, round(depth * (room - lengths[0])))
    chars = list(filler[:room])
    for start, (piece, _) in zip(starts, needles):
        chars[start:start + len(piece)] = piece
    text = "".join(chars) + tail
    # the answers are the values ending the tail, before its "." (mqar's each "key:val " = 8 characters before the next)
    n, width = len(asked), VALUE[task]
    answers = [(len(text) - 1 - 8 * (n - 1 - j) - width, len(text) - 1 - 8 * (n - 1 - j)) for j in range(n)]
    firsts = [starts[needle] + needles[needle][1][i] for needle, i in asked]
    return Episode(text, task, depth, tuple(answers), tuple(firsts))


def episode_rng(*key) -> random.Random:
    """A generator seeded by ``key`` (ints and strings), the same in every process."""
    return random.Random(" ".join(map(str, key)))


def evaluation_episodes(text: str, length: int, tasks, depths, n: int, pairs: int, queries: int,
                        seed: int) -> list[Episode]:
    """The fixed, seeded test set: ``n`` episodes of each task at each depth, each woven into ``length`` characters
    of ``text`` (the test split) from a seeded offset."""
    out = []
    for task in tasks:
        for depth in depths:
            for i in range(n):
                rng = episode_rng(seed, task, depth, i)
                start = rng.randrange(0, len(text) - length + 1)
                out.append(episode(task, rng, text[start:start + length], depth, pairs, queries))
    return out


def periodic(rng: random.Random, symbols: str, length: int) -> str:
    """``length`` characters: a random string of ``symbols``, 16 to length / 2 long, repeated (the induction warm-up:
    after its first period, every character is predicted by the one after the same character a period back)."""
    period = rng.randint(min(16, length // 2), max(1, length // 2))
    unit = "".join(rng.choice(symbols) for _ in range(period))
    return (unit * (length // period + 1))[:length]


def dictionary(rng: random.Random, length: int) -> str:
    """``length`` characters of key-value items drawn from a small dictionary written in the text itself -- 4 to 16
    keys of 3 to 5 letters, each with a value of 3 to 6 digits -- as "tovel:732981 " or "tovel is 732981. " (one
    form per window): a dense associative-recall drill (Zoology's MQAR, every repeated item a question). After a
    key's first item its value is predicted only by matching the whole key back to it: a one-character induction
    head (copy what follows any earlier ":" or "is ") answers a share 1 / keys; the keys share a small alphabet (8
    letters), so no single letter tells them apart either."""
    letters = "".join(rng.sample(LETTERS, 8))
    keys = distinct(rng, lambda: "".join(rng.choice(letters) for _ in range(rng.randint(3, 5))), rng.randint(4, 16))
    values = [number(rng, rng.randint(3, 6)) for _ in keys]
    form = rng.choice(("{}:{} ", "{} is {}. "))
    out, n = [], 0
    while n <= length:
        i = rng.randrange(len(keys))
        out.append(form.format(keys[i], values[i]))
        n += len(out[-1])
    return "".join(out)[:length]


def repeat_passages(rng: random.Random, text: str, symbols: str, most: int = 4, own: float = 0.0,
                    gap_power: float = 1.0) -> str:
    """``text`` with 1 to ``most`` passages (20 to 200 characters, at most a quarter of the text), each repeated at a
    random later place: only copying predicts a repeat. A passage is random ``symbols`` written at a random place or,
    with probability ``own``, the text's own characters there (natural text, as the copy probe's passages: random
    characters teach copying that a small model may not apply to text it can half predict). ``gap_power`` g > 1 draws
    the first appearance's place u^g from the text's start and the repeat's v^g from its end (u, v uniform): far
    repeats, which uniform places make rare (at 2048 characters 12 % of the gaps reach 1000, 2 % 1500; g = 2: 38 %
    and 14 %)."""
    chars, n = list(text), len(text)
    for _ in range(rng.randint(1, most)):
        p = rng.randint(min(20, n // 4), min(200, n // 4))
        if p < 1:
            break
        if gap_power == 1:
            a = rng.randrange(0, n - 2 * p + 1)
            b = rng.randrange(a + p, n - p + 1)
        else:
            a = int((n - 2 * p + 1) * rng.random() ** gap_power)
            b = n - p - int((n - 2 * p - a + 1) * rng.random() ** gap_power)
        if not (own and rng.random() < own):
            chars[a:a + p] = [rng.choice(symbols) for _ in range(p)]
        chars[b:b + p] = chars[a:a + p]
    return "".join(chars)


def copy_windows(text: str, length: int, passage: int, gaps, n: int, seed: int) -> list[tuple[str, int, int, int]]:
    """The copy probe: ``n`` windows of ``length`` characters of ``text`` per gap, each with a passage of ``passage``
    characters (taken from elsewhere in ``text``) written at a random place and again ``gap`` characters after its
    end -> (window, gap, first start, second start). ``text`` may be a list of token ids (a model's tokenizer,
    teacher=hf): windows of ``length`` tokens, as lists."""
    out = []
    for gap in gaps:
        if 2 * passage + gap > length:
            raise ValueError(f"the copy probe's gap {gap} and two passages of {passage} do not fit in {length}")
        for i in range(n):
            rng = episode_rng(seed, "copy", gap, i)
            window = list(text[(s := rng.randrange(0, len(text) - length + 1)):s + length])
            source = rng.randrange(0, len(text) - passage + 1)
            p = text[source:source + passage]
            first = rng.randrange(0, length - 2 * passage - gap + 1)
            second = first + passage + gap
            window[first:first + passage] = p
            window[second:second + passage] = p
            out.append(("".join(window) if isinstance(text, str) else window, gap, first, second))
    return out
