"""What cannot be loaded as a Hugging Face teacher ends in one line naming the fix (src/hf/load.py, tokens.py, the
data module and the stages), before any work; the project imports and runs without transformers."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from src.data.corpora import corpus_text
from src.errors import UserError
from src.hf.tiny import train_tokenizer
from src.train import train
from tests.conftest import ROOT, compose_config
from tests.hf.conftest import VOCAB


def hf_cfg(tmp_path, folder, *extra: str):
    return compose_config(["teacher=hf", f"teacher.hf.model={folder}", "model.seq_len=48",
                           f"paths.outputs={tmp_path / 'outputs'}", *extra])


def refused(cfg, tmp_path) -> str:
    with pytest.raises(UserError) as e:
        train(cfg, tmp_path / "run")
    assert "\n" not in str(e.value)
    return str(e.value)


def test_teacher_hf_adopts_the_model_s_shape(tmp_path, hf_models):
    from src.train import adopt_teacher

    cfg = hf_cfg(tmp_path, hf_models["llama"])
    adopt_teacher(cfg)
    assert (cfg.model.name, cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model, cfg.model.pos) == (
        "hf", 2, 4, 64, "rope")


def broken_folders(tmp_path, hf_models) -> dict:
    """Folders that are not a model that fits: a file, no config.json, a family not served, a tokenizer with more
    tokens than the model's embeddings."""
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    neox = tmp_path / "neox"
    neox.mkdir()
    (neox / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "hidden_size": 64,
                                                  "num_attention_heads": 4, "num_hidden_layers": 2}))
    small = tmp_path / "other_tokenizer"
    shutil.copytree(hf_models["llama"], small)
    train_tokenizer(corpus_text("shakespeare")[:100_000], VOCAB + 100).save_pretrained(small)
    return {"file": tmp_path / "file.txt", "empty": tmp_path / "empty", "neox": neox, "small": small}


@pytest.mark.parametrize("which,extra,msg", [
    (None, [], "teacher=hf needs a model: add teacher.hf.model=<hub name or local folder>"),
    ("missing", [], "no such folder; give an existing model folder"),
    ("file", [], "is a file: give the folder that save_pretrained wrote"),
    ("empty", [], "has no config.json: give the folder that save_pretrained wrote"),
    ("neox", [], "is a 'gpt_neox' model, which the sparse heads do not serve yet: use one of the families llama"),
    ("llama", ["model.seq_len=512"], "model.seq_len=512 is longer than teacher.hf.model="),
    ("llama", ["teacher.hf.dtype=float8"], "teacher.hf.dtype=float8 is unknown: use one of float32, bfloat16"),
    ("llama", ["data=synthetic"], "data=synthetic and data.repeats, .warmup, .periodic, .lengths, .dictionary write"),
    ("llama", ["data=recall", "data.repeats=0.1"], "a model's tokenizer (teacher=hf) reads a text corpus as it is"),
    ("small", ["+experiment=evaluate", "selector=window"], f"has {VOCAB + 100} tokens, but the model has {VOCAB}"),
    ("llama", ["+experiment=evaluate"], "make one with `python -m src.train +experiment=pipeline teacher=hf "
                                         "teacher.hf.model="),
    ("llama", ["+experiment=finetune"], "a Hugging Face teacher (teacher=hf) stays frozen"),
    ("llama", ["+experiment=pipeline", "pipeline.measure_speed=true"], "pipeline.measure_speed times one layer"),
])
def test_what_cannot_be_a_teacher_is_one_line(tmp_path, hf_models, which, extra, msg):
    folders = {**broken_folders(tmp_path, hf_models), **hf_models, "missing": tmp_path / "no" / "such"}
    folder = "null" if which is None else folders[which]
    assert msg in refused(hf_cfg(tmp_path, folder, *extra), tmp_path)


def test_a_hub_name_without_a_network_names_the_download(tmp_path, monkeypatch):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    msg = refused(hf_cfg(tmp_path, "org/some-model"), tmp_path)
    assert msg.startswith("teacher.hf.model=org/some-model is not a local folder and cannot be fetched from the hub")
    assert "hf download org/some-model --local-dir DIR" in msg


def test_a_tokenizer_that_does_not_cover_the_corpus(hf_models):
    from src.hf.tokens import TokenVocab

    class Unknown:  # every character unknown
        bos_token_id, unk_token_id = 0, 1

        def encode(self, text, add_special_tokens=False):
            return [1]

        def __call__(self, pieces, add_special_tokens=False):
            return {"input_ids": [[1] * len(p) for p in pieces]}

    with pytest.raises(UserError, match="does not cover this text: 100% of its tokens are unknown; give a corpus"):
        TokenVocab(Unknown(), 10, "m").encode("some text")


def test_without_transformers_teacher_hf_says_how_to_install_it(tmp_path, monkeypatch, hf_models):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers"
                        else real(name, *a))
    assert refused(hf_cfg(tmp_path, hf_models["llama"]), tmp_path) == (
        "teacher=hf needs the Hugging Face libraries (transformers not installed): run `pip install -e '.[hf]'` (or "
        "`make install`)")


@pytest.mark.slow  # starts a process
def test_the_project_imports_and_runs_without_transformers(tmp_path):
    script = textwrap.dedent(f"""
        import importlib.abc, importlib.metadata as metadata, sys
        HIDDEN = ("transformers", "tokenizers")  # as if not installed: no module, no distribution

        class NotInstalled(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in HIDDEN:
                    raise ModuleNotFoundError(name)

        def distribution(name, real=metadata.distribution):
            if name in HIDDEN:
                raise metadata.PackageNotFoundError(name)
            return real(name)

        sys.meta_path.insert(0, NotInstalled())
        metadata.distribution = distribution
        import src.train, src.sample, src.stages.pipeline, src.stages.finetune, src.hf, src.hf.load, src.hf.shape
        from tests.conftest import compose_config, TINY
        from src.errors import UserError
        try:
            src.train.train(compose_config(["teacher=hf", "teacher.hf.model=x", "paths.outputs={tmp_path}"]),
                            __import__("pathlib").Path("{tmp_path}/run"))
        except UserError as e:
            print("error:", e)
    """)
    (tmp_path / "check.py").write_text(script)
    out = subprocess.run([sys.executable, str(tmp_path / "check.py")], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=300)
    assert out.stdout.strip() == ("error: teacher=hf needs the Hugging Face libraries (transformers, tokenizers not "
                                  "installed): run `pip install -e '.[hf]'` (or `make install`)"), out.stderr[-2000:]
