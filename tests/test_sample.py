"""``python -m src.sample``: text from a distilled hybrid (sparse decoding) or its teacher, and every bad input's
one-line message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from src.errors import UserError
from src.sample import generate
from tests.conftest import TINY, compose_config, copy_run, run_cli


def sample(*overrides: str):
    return generate(compose_config(list(overrides), config_name="sample"))


def test_samples_the_hybrid_of_a_pipeline(pipeline_run):
    out = sample(f"ckpt={pipeline_run}", "num_chars=50", "prompt=ab", "num_samples=2")
    assert out.source.startswith(f"hybrid {pipeline_run}/approximator/checkpoints/")
    assert "block selector" in out.source and len(out.texts) == 2 and out.tokens == 100
    assert all(t.startswith("ab") and len(t) == 52 for t in out.texts) and out.tokens_per_second > 0
    # the same checkpoint file, and its teacher
    ckpt = out.source.split()[1]
    assert sample(f"ckpt={ckpt}", "num_chars=5").source.startswith("hybrid")
    teacher = sample(f"ckpt={pipeline_run}", "num_chars=5", "model=teacher")
    assert teacher.source.startswith(f"teacher {pipeline_run}/teacher/checkpoints/")


def test_hybrid_samples_are_the_hybrids_greedy_tokens(pipeline_run):
    """top_k=1: each character is the argmax of the hybrid's logits over the context so far (a forward pass each)."""
    from src.sample import load

    gpt, vocab, attention, _ = load(str(pipeline_run))
    text = sample(f"ckpt={pipeline_run}", "num_chars=29", "prompt=abc", "top_k=1").texts[0]
    ids = vocab.encode("abc")[None]
    with torch.no_grad():
        for _ in range(29):  # 3 + 29 = T: no slide
            ids = torch.cat([ids, gpt(ids, attention=attention)[:, -1].argmax(-1, keepdim=True)], 1)
    assert text == vocab.decode(ids[0].tolist())
    assert attention is not None


@pytest.mark.parametrize("overrides,message", [
    (["prompt='a~b'"], "the prompt has characters the model never saw: '~'"),
    (["prompt=''"], "the prompt is empty: give some text"),
    (["prompt=" + "a" * 33], "the prompt has 33 characters, more than the model's context of 32"),
    (["num_chars=0"], "num_chars=0 must be a positive number"),
    (["temperature=0"], "temperature=0.0 must be above 0"),
    (["top_k=-3"], "top_k=-3 must be 1 or more"),
    (["num_samples=0"], "num_samples=0 must be 1 or more"),
    (["model=student"], "model='student' is unknown: use one of auto, hybrid, teacher"),
    (["num_chars=100000000"], "num_chars=100,000,000 is more than 1,000,000 characters"),
])
def test_bad_settings_are_one_line(pipeline_run, overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        sample(f"ckpt={pipeline_run}", *overrides)


def test_prompt_file(pipeline_run, tmp_path):
    (tmp_path / "prompt.txt").write_text("abcab")
    out = sample(f"ckpt={pipeline_run}", f"prompt_file={tmp_path}/prompt.txt", "num_chars=3")
    assert out.texts[0].startswith("abcab") and len(out.texts[0]) == 8
    with pytest.raises(UserError, match="not both"):
        sample(f"ckpt={pipeline_run}", f"prompt_file={tmp_path}/prompt.txt", "prompt=ab")
    with pytest.raises(UserError, match="no such file"):
        sample(f"ckpt={pipeline_run}", f"prompt_file={tmp_path}/none.txt")
    (tmp_path / "long.txt").write_text("a" * 40)
    with pytest.raises(UserError, match="the prompt has 40 characters, more than the model's context of 32"):
        sample(f"ckpt={pipeline_run}", f"prompt_file={tmp_path}/long.txt")


def test_bad_checkpoints_are_one_line(pipeline_run, tmp_path):
    # the command named makes what src.sample reads: a pipeline (a teacher and its hybrid), not a lone teacher
    with pytest.raises(UserError, match=r"holds no checkpoint .*make one with `python -m src.train "
                                        r"\+experiment=pipeline` \(a teacher and its hybrid\)"):
        sample(f"ckpt={tmp_path}")
    with pytest.raises(UserError, match="no checkpoint at"):
        sample(f"ckpt={tmp_path}/none.ckpt")
    with pytest.raises(UserError, match=r"holds no distilled hybrid .*distil one from it with `python -m src.train "
                                        r"\+experiment=pipeline teacher.ckpt=.*teacher/checkpoints/best.ckpt`"):
        sample(f"ckpt={pipeline_run}/teacher", "model=hybrid")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        sample(f"ckpt={tmp_path}/junk.ckpt")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="device=cuda but torch sees no CUDA GPU here: use device=cpu"):
            sample(f"ckpt={pipeline_run}", "device=cuda")


@pytest.mark.slow
def test_cli_prints_text_and_tokens_per_second(pipeline_run):
    proc = run_cli("src.sample", f"ckpt={pipeline_run}", "num_chars=30", "prompt=ab", "device=cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ab") and "tokens/s" in proc.stderr and "from the hybrid" in proc.stderr
    proc = run_cli("src.sample", f"ckpt={pipeline_run}", "num_chars=0")
    assert proc.returncode == 2 and proc.stderr.startswith("error: num_chars=0") and "Traceback" not in proc.stderr


def test_teacher_folders(tmp_path, teacher_run):
    """A pipeline folder with a teacher only (stopped early) and a teacher's own run folder give the teacher."""
    from src.sample import load

    teacher = copy_run(Path(teacher_run["run_dir"]), tmp_path / "pipeline" / "teacher")
    for folder in (tmp_path / "pipeline", teacher):
        gpt, vocab, attention, source = load(str(folder))
        assert attention is None and source == f"teacher {teacher / 'checkpoints' / 'best.ckpt'}"


def test_a_non_causal_selector_cannot_generate(tmp_path, teacher_run):
    """A block_oracle hybrid (nothing to train: the evaluate stage builds it from the teacher) is refused in one
    line."""
    from src.sample import load
    from src.stages.hybrid_module import HybridModule

    module = HybridModule(model=dict(compose_config(TINY).model), vocab=list(torch.load(
        teacher_run["checkpoint"], weights_only=False)["hyper_parameters"]["vocab"]),
        hybrid={"layers": "all", "heads": "all", "budget": 16}, selector={"name": "block_oracle", "block_size": 8},
        approximator={"name": "softmax"})
    path = tmp_path / "oracle.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    with pytest.raises(UserError, match="selector=block_oracle reads the later queries of its block"):
        load(str(path))


def test_ctrl_c_prints_what_was_generated(pipeline_run, monkeypatch):
    """Ctrl-C during generation keeps the characters generated so far (no traceback, no lost text)."""
    import src.model

    real, calls = src.model.sample_next, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 7:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(src.model, "sample_next", interrupted)
    out = sample(f"ckpt={pipeline_run}", "num_chars=50", "prompt=ab")
    assert out.interrupted and out.tokens == 7 and len(out.texts[0]) == len("ab") + 7
    assert out.texts[0].startswith("ab")
