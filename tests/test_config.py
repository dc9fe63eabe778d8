"""Every config file composes against the schemas; mistakes fail at start with a clear message."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from tests.conftest import CONF, compose_config

GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in CONF.iterdir()
          if g.is_dir() and g.name != "cli"}  # cli/: the tools' own configs (python -m src.sample), not a group


def test_groups_exist():
    assert {"data", "model", "device", "experiment"} <= GROUPS.keys()
    assert {"tiny", "small", "base", "medium", "large", "xl", "baby"} <= set(GROUPS["model"])
    assert {"cpu", "cuda", "mps", "auto", "ddp"} <= set(GROUPS["device"])
    assert {"shakespeare", "text_file", "synthetic"} <= set(GROUPS["data"])


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes(group, option):
    override = f"+{group}={option}" if group in ("experiment", "curve") else f"{group}={option}"
    cfg = compose_config([override])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if group == "model":
        assert cfg.model.name == option
        assert cfg.model.d_model % cfg.model.n_head == 0


def test_model_grid_matches_prototype():
    """conf/model/ holds the prototype's grid, which the cost model reads from there (src/costs/accounting.py)."""
    from src.costs.accounting import model_grid

    expected = {"tiny": (128, 2, 64), "small": (256, 4, 128), "base": (512, 8, 256),
                "medium": (768, 12, 512), "large": (1024, 16, 1024), "xl": (1280, 20, 2048)}
    for name, (d, h, t) in expected.items():
        m = compose_config([f"model={name}"]).model
        assert (m.d_model, m.n_head, m.seq_len) == (d, h, t)
        assert m.d_model // m.n_head == 64
    assert {s.name: (s.d_model, s.n_head, s.seq_len) for s in model_grid()} == expected


def test_misspelt_key_fails():
    with pytest.raises(ConfigCompositionException) as e:
        compose_config(["model.d_modle=64"])
    assert "d_modle" in str(e.value.__cause__ or e.value)


def test_wrong_type_fails():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose_config(["model.n_layer=four"])
    assert "n_layer" in str(e.value) or "n_layer" in str(e.value.__cause__)


def test_sample_config_composes():
    cfg = compose_config(["ckpt=x.ckpt"], config_name="sample")
    assert cfg.ckpt == "x.ckpt" and cfg.num_chars > 0


def test_precision_auto_is_bf16_only_where_the_hardware_multiplies_it(monkeypatch):
    import torch

    from src.config import resolve_precision

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert resolve_precision("auto", "cpu")[0] == "32-true"
    assert "no AVX-512 BF16 or AMX" in resolve_precision("auto", "cpu")[1]
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("auto", "cpu")[0] == "bf16-mixed"
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the probe: no native bf16
    assert resolve_precision("auto", "cpu")[0] == "32-true"
    assert resolve_precision("16-mixed", "cpu") == ("16-mixed", "device.precision=16-mixed")  # any name is kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", "cuda")[0] == resolve_precision("auto", "auto")[0] == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", "cuda")[0] == "32-true"
