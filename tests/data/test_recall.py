"""Recall episodes (src/data/recall.py) and ``data=recall``: each answer is a value written far back; the training
windows carry episodes at uniform depths (most answers beyond a 1/8 window); the test set is fixed and seeded."""

from __future__ import annotations

import random
import re

import pytest
import torch

from src.data import CharDataModule
from src.data.recall import (ALPHABET, TASKS, copy_windows, dictionary, episode, episode_rng, evaluation_episodes,
                             periodic, repeat_passages)
from src.data.windows import DICT, EPISODE, PLAIN, REPEAT, WARM
from src.errors import UserError


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [600, 2049])
def test_every_answer_is_a_value_written_before_it(task, length):
    for seed in range(30):
        rng = random.Random(seed)
        e = episode(task, rng, "~" * length, rng.random(), pairs=4, queries=2)
        assert len(e.text) == length and e.task == task
        assert set(e.text) - {"~"} <= ALPHABET  # the templates write nothing outside the alphabet
        assert len(e.answers) == (2 if task == "mqar" else 1)
        for (a, b), n, d in zip(e.answers, e.needles, e.distances):
            value = e.text[a:b]
            assert value.isdigit() and e.text[n:n + len(value)] == value and d == a - n > 0
        assert e.answers[-1][1] == length - 1 and e.text[-1] == "."  # the answer ends the window


def test_each_task_reads_as_its_paper_writes_it():
    passkey = episode("passkey", random.Random(0), "~" * 400, 0.5)
    key = passkey.text[slice(*passkey.answers[0])]
    assert f"The pass key is {key}. Remember it. {key} is the pass key." in passkey.text
    assert passkey.text.endswith(f" What is the pass key? The pass key is {key}.")
    multi = episode("multikey", random.Random(0), "~" * 600, 0.5, pairs=3)
    assert multi.text.count("The magic number for") == 3 + 1  # three needles and the answer
    asked = multi.text[slice(*multi.answers[0])]
    assert multi.text.count(asked) == 2  # the asked value: its needle and its answer
    mqar = episode("mqar", random.Random(0), "~" * 400, 0.5, pairs=6, queries=3)
    found = re.findall(r"[a-z]{3}:[0-9]{3}", mqar.text)
    items, queries = found[:6], found[6:]
    assert " " + " ".join(items) + " " in mqar.text and len({i.split(":")[0] for i in items}) == 6  # distinct keys
    assert len(queries) == 3 and set(queries) <= set(items)  # each query repeats its pair: the value is the answer
    assert mqar.text.endswith(" " + " ".join(queries) + ".")


def test_the_needle_sits_at_its_depth():
    for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
        e = episode("passkey", random.Random(1), "~" * 1000, depth)
        room = 1000 - len(" What is the pass key? The pass key is 12345.")
        needle = len(" The pass key is 12345. Remember it. 12345 is the pass key. ")
        assert e.needles[0] - len(" The pass key is ") == round(depth * (room - needle))


def test_training_depths_put_most_answers_beyond_a_window_of_t_over_8():
    """Uniform depths (not Zoology's power-law gaps): at T = 2048 most answers lie more than 256 characters after
    their needle."""
    distances = []
    for seed in range(300):
        rng = episode_rng(seed)
        task = rng.choice(TASKS)
        distances += episode(task, rng, "~" * 2049, rng.random()).distances
    assert sum(d > 256 for d in distances) / len(distances) > 0.75


def test_the_test_set_is_fixed_and_covers_every_task_and_depth():
    text = "".join(random.Random(0).choices("abc \n", k=20000))
    a = evaluation_episodes(text, 700, TASKS, (0.1, 0.9), 3, 4, 2, seed=5)
    b = evaluation_episodes(text, 700, TASKS, (0.1, 0.9), 3, 4, 2, seed=5)
    assert [e.text for e in a] == [e.text for e in b]  # seeded: the same set every time
    assert len(a) == 3 * 2 * 3 and {(e.task, e.depth) for e in a} == {(t, d) for t in TASKS for d in (0.1, 0.9)}
    assert len({e.text for e in a}) == len(a)
    assert [e.text for e in evaluation_episodes(text, 700, TASKS, (0.1, 0.9), 3, 4, 2, seed=6)] != [e.text for e in a]


def test_copy_windows_repeat_a_passage_after_each_gap():
    text = "".join(random.Random(0).choices("abcdefgh \n", k=10000))
    windows = copy_windows(text, 1000, 50, (20, 400), 2, seed=1)
    assert [gap for _, gap, _, _ in windows] == [20, 20, 400, 400]
    for window, gap, first, second in windows:
        assert len(window) == 1000 and second == first + 50 + gap
        assert window[first:first + 50] == window[second:second + 50]
    with pytest.raises(ValueError, match="do not fit"):
        copy_windows(text, 100, 50, (20,), 1, seed=1)


@pytest.fixture(scope="module")
def recall_data():
    dm = CharDataModule(name="recall", seq_len=600, batch_size=8, tasks=TASKS, episodes=0.5, pairs=3, queries=2,
                        depths=(0.2, 0.8), test_episodes=2)
    dm.setup()
    return dm


def test_training_windows_carry_episodes_in_their_share(recall_data):
    loader = recall_data.train_dataloader()
    x, y = next(iter(loader))
    assert x.shape == y.shape == (8, 600) and torch.equal(x[:, 1:], y[:, :-1])
    texts = [recall_data.vocab.decode(row) for row in y]
    carried = [t for t in texts if t.endswith(".") and ("pass key is" in t or "magic number" in t or ":" in t[-12:])]
    batches = [b for _, b in zip(range(20), loader.batch_sampler)]
    share = sum(kind == EPISODE for batch in batches for kind, _, _ in batch) / (20 * 8)
    assert 0.3 < share < 0.7 and carried  # about data.episodes = 0.5 of the windows
    again = [b for _, b in zip(range(20), recall_data.train_dataloader().batch_sampler)]
    assert again == batches  # a step's windows and episodes depend on the step only: exact resume


def test_the_vocabulary_holds_every_episode_character(recall_data):
    assert ALPHABET <= set(recall_data.vocab.itos)
    for e in recall_data.recall_episodes():
        assert recall_data.vocab.decode(recall_data.vocab.encode(e.text)) == e.text


def test_validation_and_test_are_the_filler_alone(recall_data):
    x, _ = next(iter(recall_data.test_dataloader()))
    assert not any("pass key" in recall_data.vocab.decode(row) for row in x)
    episodes = recall_data.recall_episodes("test")
    assert len(episodes) == len(TASKS) * 2 * 2 and episodes == recall_data.recall_episodes("test")


@pytest.mark.parametrize("settings,message", [
    ({"filler": "synthetic"}, "data.filler='synthetic': the episodes are woven into a text corpus"),
    ({"tasks": ["passkey", "haystack"]}, "data.tasks=['passkey', 'haystack']: 'haystack' is unknown"),
    ({"episodes": 1.5}, "data.episodes=1.5 must be a share"),
    ({"pairs": 2, "queries": 3}, "data.pairs=2, data.queries=3"),
    ({"depths": [0.5, 1.2]}, "data.depths=[0.5, 1.2] must be fractions in [0, 1]"),
    ({"test_episodes": 0}, "data.test_episodes=0 must be 1 or more"),
])
def test_bad_recall_settings_are_one_line(settings, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        CharDataModule(name="recall", seq_len=600, **settings)


def test_periodic_text_repeats_its_period_and_passages_repeat_later():
    for seed in range(20):
        rng = random.Random(seed)
        text = periodic(rng, "abc123 ", 64)
        period = next(p for p in range(1, 65) if all(text[i] == text[i - p] for i in range(p, 64)))
        assert len(text) == 64 and 16 <= period <= 32 and set(text) <= set("abc123 ")
        filler = "~" * 600
        out = repeat_passages(rng, filler, "xyz", most=1)
        runs = re.findall(r"[xyz]+", out)  # the passage and its repeat (one run of both where they touch)
        half = len("".join(runs)) // 2
        assert len(out) == 600 and 20 <= half <= 150 and "".join(runs)[:half] == "".join(runs)[half:]
        assert len(runs) == 2 or runs[0][:half] == runs[0][half:]


def test_warmup_steps_then_repeats_and_episodes_in_their_shares():
    dm = CharDataModule(name="recall", seq_len=600, batch_size=4, episodes=0.25, repeats=0.5, pairs=3,
                        warmup=[[50, 2], [150, 1]])
    dm.setup()
    loader = dm.train_dataloader()
    batches = [b for _, b in zip(range(40), loader.batch_sampler)]
    assert [len(b) for b in batches[:3]] == [48, 48, 16]  # as many characters per step as 4 windows of 600
    assert all(kind == WARM and length == (50 if i < 2 else 150) for i, b in enumerate(batches[:3])
               for kind, length, _ in b)
    kinds = [kind for b in batches[3:] for kind, _, _ in b]
    assert set(kinds) == {PLAIN, EPISODE, REPEAT} and 0.3 < kinds.count(REPEAT) / len(kinds) < 0.7
    it = iter(loader)
    x, y = next(it)
    assert x.shape == (48, 50) and torch.equal(x[:, 1:], y[:, :-1])
    for _ in range(3):
        x, y = next(it)
    assert x.shape == (4, 600)
    assert "data.warmup" not in dm.summary() and "induction warm-up: 2 steps at 50" in dm.summary()


def test_periodic_windows_keep_the_warm_up_in_the_mix():
    """data.periodic: that share of the windows after the warm-up are periodic random strings of the whole window."""
    dm = CharDataModule(name="shakespeare", seq_len=300, batch_size=8, periodic=0.25, warmup=[[50, 1]])
    dm.setup()
    batches = [b for _, b in zip(range(30), dm.train_dataloader().batch_sampler)]
    later = [item for b in batches[1:] for item in b]
    periodic = [length for kind, length, _ in later if kind == WARM]
    assert {kind for kind, _, _ in later} == {PLAIN, WARM} and 0.1 < len(periodic) / len(later) < 0.4
    assert set(periodic) == {300}  # the whole window
    x, y = dm.train_dataloader().dataset[next(item for item in later if item[0] == WARM)]
    text = dm.vocab.decode(torch.cat([x, y[-1:]]))
    period = next(p for p in range(1, 151) if text[p:] == text[:-p])  # a string repeated with some period
    assert len(text) == 301 and period <= 150
    assert "periodic random strings in 25% of the training windows" in dm.summary()


def test_a_dictionary_window_repeats_each_key_with_its_own_value():
    """data.dictionary: key-value items from a few keys defined in the window, a key's value the same every time --
    only matching the whole key predicts it (the keys share letters, no single one tells them apart)."""
    for seed in range(20):
        text = dictionary(random.Random(seed), 400)
        assert len(text) == 400 and set(text) <= ALPHABET
        items = re.findall(r"([a-z]+)(?::| is )(\d+)[. ]", text)
        keys = {k for k, _ in items}
        assert 4 <= len(keys) <= 16 and len(items) > 2 * len(keys) - 4  # most keys asked again
        assert all(len({v for k2, v in items if k2 == k}) == 1 for k in keys)  # one value per key
        assert len(set("".join(keys))) <= 8
    dm = CharDataModule(name="recall", seq_len=300, batch_size=8, episodes=0.25, dictionary=0.25, pairs=2)
    dm.setup()
    later = [item for _, b in zip(range(20), dm.train_dataloader().batch_sampler) for item in b]
    drills = [item for item in later if item[0] == DICT]
    assert {kind for kind, *_ in later} == {PLAIN, EPISODE, DICT} and 0.1 < len(drills) / len(later) < 0.4
    assert {length for _, length, _ in drills} == {300}  # the whole window
    x, y = dm.train_dataloader().dataset[drills[0]]
    assert re.fullmatch(r"([a-z]+(:| is )\d+\.? )+[a-z0-9 .:is]*", dm.vocab.decode(torch.cat([x, y[-1:]])))
    assert "key-value dictionaries in 25% of the training windows" in dm.summary()


def test_length_curriculum_shortens_the_mix_then_grows_to_seq_len():
    """data.lengths: after the warm-up, the mix's windows at the curriculum's lengths (as many as hold batch_size x
    seq_len characters), episodes and periodic strings included, then at seq_len."""
    dm = CharDataModule(name="recall", seq_len=600, batch_size=2, episodes=0.5, periodic=0.25, pairs=2,
                        warmup=[[50, 1]], lengths=[[200, 2], [300, 1]])
    dm.setup()
    loader = dm.train_dataloader()
    batches = [b for _, b in zip(range(5), loader.batch_sampler)]
    assert [len(b) for b in batches] == [24, 6, 6, 4, 2]
    assert {item[3] for b in batches[1:3] for item in b if item[0] != WARM} <= {200}
    assert {item[1] for b in batches[1:3] for item in b if item[0] == WARM} <= {200}  # periodic: the short window
    assert all(len(item) == 3 for item in batches[4])  # seq_len: no length given
    shapes = [tuple(x.shape) for x, _ in (loader.collate_fn([loader.dataset[item] for item in b]) for b in batches)]
    assert shapes == [(24, 50), (6, 200), (6, 200), (4, 300), (2, 600)]
    kinds = {item[0] for b in batches[1:] for item in b}
    assert EPISODE in kinds and "length curriculum: 2 steps at 200, 1 steps at 300" in dm.summary()
    plain = CharDataModule(name="shakespeare", seq_len=600, batch_size=2, lengths=[[100, 1]])
    plain.setup()
    first, second = [b for _, b in zip(range(2), plain.train_dataloader().batch_sampler)]
    x, y = plain.train_dataloader().dataset[first[0]]
    assert len(first) == 12 and x.shape == (100,) and torch.equal(x[1:], y[:-1]) and isinstance(second[0], int)


def test_a_curriculum_stage_has_its_own_share_of_episodes():
    """data.lengths [length, steps, episodes]: a stage's share of episodes (a window of 2048 holds a quarter of the
    episodes four of 512 do); the last stage, at seq_len, has data.episodes."""
    dm = CharDataModule(name="recall", seq_len=600, batch_size=4, episodes=0.75, repeats=0.25, pairs=2,
                        lengths=[[200, 30, 0.0], [300, 30]])
    dm.setup()
    batches = [b for _, b in zip(range(90), dm.train_dataloader().batch_sampler)]
    share = lambda bs: sum(item[0] == EPISODE for b in bs for item in b) / sum(len(b) for b in bs)  # noqa: E731
    assert share(batches[:30]) == 0 and 0.6 < share(batches[30:60]) < 0.9 and 0.6 < share(batches[60:]) < 0.9
    assert {len(b) for b in batches[:30]} == {12} and {len(b) for b in batches[60:]} == {4}
    assert "length curriculum: 30 steps at 200 with 0% episodes, 30 steps at 300)" in dm.summary()


def test_repeated_passages_may_be_the_text_itself():
    """data.repeat_text: a share of the repeated passages copy the text's own characters later on (no random
    characters written): what the copy probe measures."""
    filler = "".join(chr(0x100 + i) for i in range(600))  # every character distinct: a repeat shows as a copy
    for seed in range(10):
        out = repeat_passages(random.Random(seed), filler, "xyz", most=1, own=1.0)
        assert len(out) == 600 and not set(out) & set("xyz")
        changed = [i for i in range(600) if out[i] != filler[i]]
        first = ord(out[changed[0]]) - 0x100  # the repeat copies the passage that starts there
        assert 20 <= len(changed) <= 150 and out[changed[0]:changed[-1] + 1] == filler[first:first + len(changed)]
    dm = CharDataModule(name="recall", seq_len=600, episodes=0.2, repeats=0.3, repeat_text=0.5)
    dm.setup()
    assert "repeated passages in 30% of the training windows, 50% of them the text's own" in dm.summary()


def test_gap_power_moves_the_repeats_apart():
    """data.gap_power: the repeated passages' places drawn towards the window's ends -- at 2048 characters, 12 % of the
    gaps reach 1000 uniformly, 38 % with power 2 -- each passage still repeated whole, inside the window."""
    filler = "".join(chr(0x100 + i) for i in range(2048))  # every character distinct: a repeat shows as a copy
    far = {}
    for power in (1, 2):
        gaps = []
        for seed in range(300):
            out = repeat_passages(random.Random(seed), filler, "xyz", most=1, own=1.0, gap_power=power)
            changed = [i for i in range(2048) if out[i] != filler[i]]
            first = ord(out[changed[0]]) - 0x100  # the repeat copies the passage that starts there
            assert len(out) == 2048 and out[changed[0]:changed[-1] + 1] == filler[first:first + len(changed)]
            gaps.append(changed[0] - first - len(changed))
        assert min(gaps) >= 0
        far[power] = sum(g >= 1000 for g in gaps) / len(gaps)
    assert 0.06 < far[1] < 0.2 and 0.28 < far[2] < 0.5
    dm = CharDataModule(name="recall", seq_len=600, episodes=0.2, repeats=0.3, repeat_text=0.5, gap_power=2)
    dm.setup()
    assert "places u^2 from the ends" in dm.summary() and dm.train_dataloader().dataset.gap_power == 2


def test_depth_power_moves_the_training_needles_back():
    """data.depth_power: the training episodes' needles drawn as u ** power -- 2 puts ~45 % in the first fifth of the
    text (uniform: 20 %); the test episodes keep their fixed depths."""
    shares = {}
    for power in (1, 2):
        dm = CharDataModule(name="recall", seq_len=600, episodes=0.5, depth_power=power)
        dm.setup()
        windows = dm.train_dataloader().dataset
        rng = random.Random(0)
        shares[power] = sum(windows.depth(rng) < 0.2 for _ in range(4000)) / 4000
        assert {e.depth for e in dm.recall_episodes()} == {0.1, 0.3, 0.5, 0.7, 0.9}
    assert 0.17 < shares[1] < 0.23 and 0.41 < shares[2] < 0.49
    assert "needle depths u^2" in dm.summary()


@pytest.mark.parametrize("settings,message", [
    ({"depth_power": 0}, r"data.depth_power=0 must be in \(0, 10\]: 1 draws the training episodes' depths uniformly"),
    ({"repeats": 0.3, "lengths": [[200, 10, 0.9]]}, r"data.lengths: \[200, 10, 0.9\]: a stage is \[length, steps\] "
     r"or \[length, steps, episodes\] with episodes a share in \[0, 0.7\]"),
    ({"lengths": [[200, 10, "many"]]}, r"data.lengths: \[200, 10, 'many'\]: a stage is"),
    ({"repeat_text": 2}, r"data.repeat_text=2 must be a share of the repeated passages in \[0, 1\]"),
    ({"gap_power": 0.5}, r"data.gap_power=0.5 must be in \[1, 10\]: 1 places the repeated passages uniformly"),
    ({"repeats": 0.4, "periodic": 0.2}, r"data.periodic=0.2 must be a share of the training windows in \[0, 0.1\]"),
    ({"repeats": 0.4, "dictionary": 0.2}, r"data.dictionary=0.2 must be a share of the training windows in \[0, 0.1\]"),
    ({"repeats": 0.8}, r"data.repeats=0.8 must be a share of the training windows in \[0, 0.5\]"),
    ({"warmup": [[700, 10]]}, r"data.warmup: a length of 2 to model.seq_len=600 characters .* got \[700, 10\]"),
    ({"warmup": [64]}, r"data.warmup=\[64\]: give \[\[length, steps\], ...\]"),
    ({"lengths": [[1, 10]]}, r"data.lengths: a length of 2 to model.seq_len=600 characters .* got \[1, 10\]"),
])
def test_bad_mix_settings_are_one_line(settings, message):
    with pytest.raises(UserError, match=message):
        CharDataModule(name="recall", seq_len=600, **settings)


def test_a_dictionary_needs_the_recall_alphabet():
    with pytest.raises(UserError, match="data.dictionary writes key-value items of letters and digits: use it with "
                                        "data=recall"):
        CharDataModule(name="shakespeare", seq_len=600, dictionary=0.2)


def test_a_window_too_short_for_the_episodes_is_one_line():
    with pytest.raises(UserError, match="data=recall: a multikey episode .* does not fit in 129: give a longer "
                                        "model.seq_len"):
        CharDataModule(name="recall", seq_len=128, batch_size=2, tasks=["multikey"], pairs=4).setup()
