"""Loading a Hugging Face teacher (``teacher=hf``, ``teacher.hf.*``): a local folder (what ``save_pretrained`` wrote)
or a hub name, its config, tokenizer and weights (``AutoModelForCausalLM.from_pretrained`` with the project's
attention function), frozen. Whatever cannot be loaded ends in one line naming the fix (src/errors.py UserError):
transformers missing, no model named, a missing folder, a hub name without a network, a family the sparse heads do
not serve, a model.seq_len longer than the model's positions, an unknown dtype or device."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from src.config import resolve_device
from src.errors import UserError
from src.hf import require
from src.hf.shape import HFShape, family_problem, shape_of, shape_problem

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def locate(name: str | None) -> str:
    """``teacher.hf.model`` -> an absolute folder, or the hub name as given."""
    if not name:
        raise UserError("teacher=hf needs a model: add teacher.hf.model=<hub name or local folder>")
    path = Path(str(name)).expanduser()
    if path.is_file():
        raise UserError(f"teacher.hf.model={name} is a file: give the folder that save_pretrained wrote (config.json "
                        "beside the weights and the tokenizer)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"teacher.hf.model={name} has no config.json: give the folder that save_pretrained wrote")
        return str(path.resolve())
    if str(name).startswith(("/", ".", "~")) or str(name).count("/") > 1:
        raise UserError(f"teacher.hf.model={name}: no such folder; give an existing model folder (save_pretrained's) "
                        "or a hub name (org/model)")
    return str(name)


def unreachable(name: str, error: Exception) -> UserError:
    first = (str(error).splitlines() or [type(error).__name__])[0][:160]
    return UserError(f"teacher.hf.model={name} is not a local folder and cannot be fetched from the hub ({first}): "
                     f"download it where there is a network (`hf download {name} --local-dir DIR`) and give "
                     "teacher.hf.model=DIR")


@contextlib.contextmanager
def quiet_hub():
    """The hub client's retry warnings held back while a model is looked up: a failure ends in one line of ours."""
    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    hub.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub.setLevel(level)


def load_config(name: str):
    """The model's config (no weights), or one line."""
    require()
    from transformers import AutoConfig

    where = locate(name)
    try:
        with quiet_hub():
            return AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as e:
        if Path(where).is_dir():
            raise UserError(f"teacher.hf.model={name}: its config.json cannot be read ({str(e).splitlines()[0]}): "
                            "save the model again with save_pretrained") from None
        raise unreachable(name, e) from None


def model_shape(hf: dict, seq_len: int) -> HFShape:
    """The model's layers, heads and widths at model.seq_len, checked (one line naming the fix)."""
    config = load_config(hf["model"])
    problem = family_problem(config, hf["model"])
    shape = shape_of(config, seq_len)
    problem = problem or shape_problem(shape, hf["model"])
    if problem:
        raise UserError(problem)
    return shape


def model_settings(hf: dict, seq_len: int) -> dict:
    """The model.* settings a run of this model reads (run folders, reports, the cost model, the lookup of earlier
    runs): its layers, heads, width and positions."""
    s = model_shape(hf, seq_len)
    return {"n_layer": s.n_layer, "n_head": s.n_head, "d_model": s.d_model, "pos": s.pos}


def load_vocab(hf: dict):
    """The model's tokenizer as the project's vocabulary (src/hf/tokens.py)."""
    require()
    from transformers import AutoTokenizer

    from src.hf.tokens import TokenVocab

    config = load_config(hf["model"])
    where = locate(hf["model"])
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as e:
        if Path(where).is_dir():
            raise UserError(f"teacher.hf.model={hf['model']} has no tokenizer that loads ({str(e).splitlines()[0]}): "
                            "save the model's tokenizer into the folder (tokenizer.save_pretrained)") from None
        raise unreachable(hf["model"], e) from None
    if len(tokenizer) > config.vocab_size:
        raise UserError(f"the tokenizer of teacher.hf.model={hf['model']} has {len(tokenizer)} tokens, but the model "
                        f"has {config.vocab_size} embeddings: give the tokenizer saved with the model (the same "
                        "folder)")
    return TokenVocab(tokenizer, config.vocab_size, hf["model"])


def load_teacher(hf: dict, seq_len: int):
    """The frozen model of ``teacher.hf`` (model, dtype, device) as an HFTeacher at model.seq_len."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from src.hf.attention import NAME, register
    from src.hf.teacher import HFTeacher

    shape = model_shape(hf, seq_len)
    dtype = DTYPES.get(str(hf.get("dtype") or "float32"))
    if dtype is None:
        raise UserError(f"teacher.hf.dtype={hf.get('dtype')} is unknown: use one of {', '.join(DTYPES)}")
    device = resolve_device(hf["device"], "teacher.hf.device") if hf.get("device") else torch.device("cpu")
    vocab = load_vocab(hf)
    register()
    hf_logging.disable_progress_bar()
    where = locate(hf["model"])
    try:
        model = AutoModelForCausalLM.from_pretrained(where, attn_implementation=NAME, dtype=dtype)
    except (OSError, ValueError) as e:
        if Path(where).is_dir():
            raise UserError(f"teacher.hf.model={hf['model']}: its weights cannot be loaded "
                            f"({str(e).splitlines()[0]}): save the model again with save_pretrained") from None
        raise unreachable(hf["model"], e) from None
    log.info("teacher %s (%s, %d layers, %d heads / %d key-value heads, width %d), %s on %s", hf["model"],
             shape.family, shape.n_layer, shape.n_head, shape.n_kv_head, shape.d_model, dtype, device)
    return HFTeacher(model.to(device), vocab, seq_len, hf["model"])
