"""Parameter roles: the one rule behind optimizer groups, quantization, calibration and TTT parameter sets."""

from __future__ import annotations

import pytest
import torch

from golfctl.calibration import collect_hessians
from golfctl.config import ModelConfig
from golfctl.model import GPT, ROLES, TTT_PARAM_SETS, parameter_groups, parameter_roles, ttt_parameters

# range loops and a larger eval depth: the roles must not depend on either
CFG = ModelConfig(vocab_size=64, model_dim=32, num_layers=3, num_heads=4, num_kv_heads=2, mlp_mult=2.0,
                  loop_start=1, loop_end=1, num_loops=2, eval_loops=3)
ATTN = {f"blocks.{i}.attn.{m}.weight" for i in range(3) for m in ("c_q", "c_k", "c_v", "proj")}
MLP = {f"blocks.{i}.mlp.{m}.weight" for i in range(3) for m in ("fc", "proj")}


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG)


def names_with(model: GPT, predicate) -> set[str]:
    return {name for name, role in parameter_roles(model).items() if predicate(role)}


def test_every_parameter_has_one_role_in_parameter_order(model):
    roles = parameter_roles(model)
    assert list(roles) == [name for name, _ in model.named_parameters()]
    assert names_with(model, lambda r: r.name == "embed") == {"tok_emb.weight"}
    assert names_with(model, lambda r: r.name == "attn") == ATTN
    assert names_with(model, lambda r: r.name == "mlp") == MLP
    scalar = names_with(model, lambda r: r.name == "scalar")
    assert {"skip_weights", "blocks.0.resid_mix", "blocks.0.attn.q_gain", "blocks.0.attn_scale",
            "blocks.0.mlp_scale"} <= scalar
    assert scalar == set(roles) - ATTN - MLP - {"tok_emb.weight"}


def test_quantized_means_matrices_and_the_embedding(model):
    params = dict(model.named_parameters())
    assert names_with(model, lambda r: r.quantized) == ATTN | MLP | {"tok_emb.weight"}
    assert all(params[name].ndim == 2 for name in names_with(model, lambda r: r.quantized))


def test_optimizer_groups_follow_the_roles(model):
    groups = parameter_groups(model)
    assert set(groups) == {"embed", "matrix", "scalar"}
    roles = parameter_roles(model)
    for group, named in groups.items():
        assert [name for name, _ in named] == [name for name, role in roles.items() if role.optimizer == group]
    listed = [p for named in groups.values() for _, p in named]
    assert len({id(p) for p in listed}) == len(listed) == len(list(model.parameters()))
    assert {name for name, _ in groups["matrix"]} == ATTN | MLP


def test_calibration_collects_a_hessian_for_every_quantized_parameter(model):
    ids = torch.randint(0, CFG.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    hessians = collect_hessians(model, [ids], loops=CFG.resolved_eval_loops)
    params = dict(model.named_parameters())
    assert set(hessians) == names_with(model, lambda r: r.quantized)
    for name, H in hessians.items():
        assert H.shape == (params[name].size(1),) * 2, name


def test_ttt_parameter_sets(model):
    assert TTT_PARAM_SETS == ("all", "mlp", "attn", "scalar", "embed")
    assert set(TTT_PARAM_SETS[1:]) == set(ROLES)
    params = dict(model.named_parameters())

    def selected(selection: str) -> set[str]:
        chosen = {id(p) for p in ttt_parameters(model, selection)}
        return {name for name, p in params.items() if id(p) in chosen}

    assert selected("all") == set(params)
    assert selected("mlp, attn") == ATTN | MLP
    assert selected("embed") == {"tok_emb.weight"}
    assert selected("scalar,all") == set(params)
    assert selected("scalar") == names_with(model, lambda r: r.name == "scalar")
    assert [id(p) for p in ttt_parameters(model, "all")] == [id(p) for p in model.parameters()]


@pytest.mark.parametrize("selection", ["", " , ", "mlp,heads", "MLP"])
def test_ttt_parameters_refuses_unknown_sets(model, selection):
    with pytest.raises(ValueError, match="choose from all, mlp, attn, scalar, embed"):
        ttt_parameters(model, selection)
