"""The evaluation's probes (src/stages/probes.py) on models whose answers are known: a model that knows every next
character recalls every answer; one that knows none recalls none; the copy probe's ratio is 1 for a model that does
not look back and falls for one that copies."""

from __future__ import annotations

import random

import pytest
import torch

from src.data import Vocab
from src.data.recall import ALPHABET, TASKS, copy_windows, evaluation_episodes
from src.stages.probes import copy_gaps, copy_probe, greedy_recall, probe_results, recall_accuracy

CPU = torch.device("cpu")
TEXT = "".join(random.Random(0).choices("abcdefgh \n", k=30000))
VOCAB = Vocab(sorted(set(TEXT) | ALPHABET))


def knowing(texts: list[str], where=lambda text: range(len(text) - 1)):
    """A model that predicts the right next character at the positions ``where(text)`` and nothing (uniform) at the
    others, for exactly these texts."""
    rows = {VOCAB.encode(t)[:-1].numpy().tobytes(): t for t in texts}

    def forward(x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*x.shape, len(VOCAB))
        for i, row in enumerate(x):
            text = rows[row.numpy().tobytes()]
            target = VOCAB.encode(text)[1:]
            for p in where(text):
                logits[i, p, target[p]] = 10.0
        return logits

    return forward


def test_recall_counts_each_answer_by_task_and_depth():
    episodes = evaluation_episodes(TEXT, 700, TASKS, (0.2, 0.8), 3, 4, 2, seed=1)
    perfect = recall_accuracy(knowing([e.text for e in episodes]), episodes, VOCAB, 4, CPU)
    depths = {f"{t}/d{d:g}" for t in TASKS for d in (0.2, 0.8)}
    assert perfect["all"] == 1.0 and set(perfect) == {"all", *TASKS, *depths}

    def all_but_answers(text):
        e = next(e for e in episodes if e.text == text)
        inside = {p for a, b in e.answers for p in range(a - 1, b - 1)}
        return [p for p in range(len(text) - 1) if p not in inside]

    blind = recall_accuracy(knowing([e.text for e in episodes], all_but_answers), episodes, VOCAB, 4, CPU)
    assert blind["all"] == 0.0  # right everywhere but at the answers: no answer recalled

    def first_digit_only(text):
        e = next(e for e in episodes if e.text == text)
        return [p for p in range(len(text) - 1) if p not in {a for a, _ in e.answers}] + [a - 1 for a, _ in e.answers]

    assert recall_accuracy(knowing([e.text for e in episodes], first_digit_only), episodes, VOCAB, 4,
                           CPU)["all"] == 0.0  # a whole answer or nothing


def test_greedy_recall_generates_each_passkey_from_the_text_before_its_answer():
    """The passkey generated through the model's cache (``generate``, top-1, with the model's attention modules):
    right where the model continues the prompt with the answer, per depth; other tasks are not generated."""
    episodes = evaluation_episodes(TEXT, 700, TASKS, (0.2, 0.8), 3, 4, 2, seed=1)
    answers = {e.text[:e.answers[-1][0]]: (e.text[slice(*e.answers[-1])], e.depth) for e in episodes}
    calls = []

    class Model:  # knows the passkey where the needle is shallow, says 00000 where it is deep
        def generate(self, idx, n, top_k=None, attention=None):
            calls.append((n, top_k, attention))
            answer, depth = answers[VOCAB.decode(idx[0])]
            return torch.cat([idx, VOCAB.encode(answer if depth < 0.5 else "0" * n)[None]], 1)

    shares = greedy_recall(Model(), "sparse layers", episodes, VOCAB, CPU)
    assert shares == {"passkey_greedy": 0.5, "passkey_greedy/d0.2": 1.0, "passkey_greedy/d0.8": 0.0}
    assert calls == [(5, 1, "sparse layers")] * 6  # the passkey episodes only: 5 digits, greedy, the hybrid's layers


def test_no_passkey_generated_where_a_model_cannot_generate():
    """An oracle reads the later queries of its block: it cannot generate, so no model's passkey is generated (the
    table stays whole), while the teacher-forced shares are measured as always."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    episodes = evaluation_episodes(TEXT, 700, ("passkey",), (0.5,), 2, 4, 2, seed=1)
    dm = SimpleNamespace(recall_episodes=lambda split: episodes, vocab=VOCAB)
    cfg = OmegaConf.create({"evaluate": {"recall": True, "greedy": True, "copy_windows": 0}, "data": {"batch_size": 4}})

    class Model:
        def __call__(self, x, attention=None):
            return knowing([e.text for e in episodes])(x)

        def generate(self, *args, **kwargs):
            raise AssertionError("an oracle cannot generate")

    oracle = SimpleNamespace(sparse=SimpleNamespace(selector=SimpleNamespace(causal=False)))
    out = probe_results(cfg, {"teacher": (Model(), None), "hybrid": (Model(), {0: oracle})}, dm, CPU)
    assert out["test/hybrid_recall/passkey"] == 1.0 and not any("greedy" in key for key in out)


def test_a_checkpoints_probes_are_kept_and_read_again_while_its_weights_are_the_same(tmp_path):
    """probe_results(cache={name: checkpoint}): the first run measures and keeps the results in the checkpoint's run
    folder (RUN/probes/); a later one with the same weights and probes reads them (no forward); other weights or
    other episodes measure again."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    episodes = evaluation_episodes(TEXT, 700, ("passkey",), (0.5,), 2, 4, 2, seed=1)
    dm = SimpleNamespace(recall_episodes=lambda split: episodes, vocab=VOCAB, name="recall", test_episodes=2)
    cfg = OmegaConf.create({"evaluate": {"recall": True, "greedy": False, "copy_windows": 0},
                            "data": {"batch_size": 4}, "model": {"seq_len": 699}, "seed": 0})
    calls = []

    class Model(torch.nn.Module):
        def __init__(self, w: float):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(w))

        def forward(self, x, attention=None):
            calls.append(len(x))
            return knowing([e.text for e in episodes])(x)

    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    first = probe_results(cfg, {"teacher": (Model(1.0), None)}, dm, CPU, cache={"teacher": str(ckpt)})
    assert first == {"test/teacher_recall/passkey": 1.0, "test/teacher_recall/passkey/d0.5": 1.0,
                     "test/teacher_recall/all": 1.0} and calls == [2]
    assert len(list((tmp_path / "run" / "probes").glob("*.json"))) == 1
    assert probe_results(cfg, {"teacher": (Model(1.0), None)}, dm, CPU, cache={"teacher": str(ckpt)}) == first
    assert calls == [2]  # read, not measured
    probe_results(cfg, {"teacher": (Model(2.0), None)}, dm, CPU, cache={"teacher": str(ckpt)})  # other weights
    dm.test_episodes = 3  # other episodes
    probe_results(cfg, {"teacher": (Model(1.0), None)}, dm, CPU, cache={"teacher": str(ckpt)})
    probe_results(cfg, {"teacher": (Model(1.0), None)}, dm, CPU)  # no cache asked for
    assert calls == [2, 2, 2, 2] and len(list((tmp_path / "run" / "probes").glob("*.json"))) == 3


def test_the_copy_probe_is_one_without_copying_and_falls_with_it():
    T, n = 699, 2
    passage, gaps = copy_gaps(T)
    assert passage == 100 and gaps == (50, 200, 500)  # 2 x 100 + gap <= 700
    uniform = lambda x: torch.zeros(*x.shape, len(VOCAB))  # noqa: E731
    assert copy_probe(uniform, TEXT, VOCAB, T, n, 4, CPU, seed=3) == {"g50": 1.0, "g200": 1.0, "g500": 1.0}
    windows = copy_windows(TEXT, T + 1, passage, gaps, n, seed=3)
    second = {w: range(b, b + passage - 1) for w, _, _, b in windows}
    copier = knowing([w for w, _, _, _ in windows], lambda text: second[text])  # knows the second appearance only
    ratios = copy_probe(copier, TEXT, VOCAB, T, n, 4, CPU, seed=3)
    assert set(ratios) == {"g50", "g200", "g500"} and all(r < 0.01 for r in ratios.values())


def test_a_short_context_still_gets_a_copy_probe():
    assert copy_gaps(127) == (32, (50,))  # a quarter of 128 each, 50 between them
    assert copy_gaps(63) == (16, (32,))  # no gap of the list fits: all the room left between them
    assert copy_gaps(2047) == (100, (50, 200, 500, 1000, 1500))


@pytest.mark.parametrize("T", [127, 2047])
def test_copy_windows_fit(T):
    passage, gaps = copy_gaps(T)
    assert all(2 * passage + g <= T + 1 for g in gaps)
