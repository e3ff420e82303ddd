"""The `frontier` preset's model is the 2026-04-27 record's: its size as the record's log prints it, and
each new piece (document attention, SmearGate with the BOS fix, the sparse attention gate, the
two-lane decoder) checked against its definition, written out here independently of golfctl/model.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from golfctl.attention import cu_seqlens, document_attention, segment_starts
from golfctl.config import ModelConfig, TrainConfig, resolve_config
from golfctl.errors import UserError
from golfctl.model import GATE, GPT, ROLES, norm, parameter_groups, parameter_roles, unet_layout
from golfctl.shards import BOS_ID

FRONTIER = resolve_config(TrainConfig, "frontier")
# the frontier model scaled down: every new piece on, two lanes from layer 3 of 4
SMALL = dataclasses.replace(FRONTIER.model_config(), vocab_size=64, model_dim=32, num_layers=4, num_heads=4,
                            num_kv_heads=2, rope_dims=4, xsa_last_n=4, loop_start=1, loop_end=1, num_loops=2,
                            two_lane_start=3, gate_window=6, doc_max_len=8)


def small_model(**changes) -> GPT:
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(SMALL, **changes))
    with torch.no_grad():  # every gate, scale and projection away from its identity init
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    return model


def docs(*lengths: int, lead: int = 0, seed: int = 0) -> torch.Tensor:
    """One row (1, T): `lead` tokens of a document begun before the row, then documents of the given
    lengths, each a BOS and length − 1 other tokens."""
    gen = torch.Generator().manual_seed(seed)
    parts = [torch.randint(2, 64, (lead,), generator=gen)]
    for n in lengths:
        parts += [torch.tensor([BOS_ID]), torch.randint(2, 64, (n - 1,), generator=gen)]
    return torch.cat(parts)[None]


def test_size_layout_and_roles_are_the_records():
    """`model_params:35945671` (train_seed42.log:132); the record's 04-09 size plus 11·8·12 gate weights,
    12 + 1 smear weights and 11·(2 + 4) lane scales. All new tensors go to the scalar AdamW (src:1909-1927)."""
    with torch.device("meta"):
        model = GPT(FRONTIER.model_config())
    assert sum(p.numel() for p in model.parameters()) == 35_945_671 == 35_944_536 + 11 * 8 * 12 + 13 + 11 * 6
    assert unet_layout(FRONTIER, FRONTIER.num_loops) == ([0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10])
    assert FRONTIER.train_row_len == 98_304  # one packed row per rank and micro-batch
    roles = parameter_roles(model)
    assert {n for n, r in roles.items() if r is GATE} == {f"blocks.{i}.attn.out_gate" for i in range(11)}
    for name in ("smear_gate", "smear_lambda", "lane_resid_scales", "lane_post_scales"):
        assert roles[name] is ROLES["scalar"]
    scalar = {name for name, _ in parameter_groups(model)["scalar"]}
    assert {f"blocks.{i}.attn.out_gate" for i in range(11)} <= scalar


def reference_starts(ids: list[int], max_len: int) -> list[int]:
    """The record's `_build_cu_seqlens`, per token: documents from each BOS (and the row start), cut
    every max_len tokens from the document's start."""
    starts, doc = [], 0
    for t, token in enumerate(ids):
        doc = t if token == BOS_ID else doc
        starts.append(doc + (t - doc) // max_len * max_len)
    return starts


def test_segments_and_varlen_offsets():
    ids = torch.cat((docs(3, 20, 1, 9, lead=5), docs(36, lead=2, seed=1)))  # (2, 38)
    starts = segment_starts(ids, BOS_ID, 8)
    assert starts.tolist() == [reference_starts(row, 8) for row in ids.tolist()]
    cu = cu_seqlens(starts)  # FA3 varlen's offsets over both rows laid end to end, padded with B·T
    boundaries = sorted({b * 38 + s for b in range(2) for s in starts[b].tolist()})
    assert cu.tolist() == boundaries + [76] * (77 - len(boundaries))


@pytest.mark.parametrize("T, max_len", [(7, 8), (8, 8), (29, 8), (24, 6)])  # one tile, exact tiles, a ragged one
def test_document_attention_is_the_block_diagonal_causal_mask(T, max_len):
    gen = torch.Generator().manual_seed(T)
    q, k, v = torch.randn(2, 4, T, 8, generator=gen), torch.randn(2, 2, T, 8, generator=gen), \
        torch.randn(2, 2, T, 8, generator=gen)
    ids = torch.randint(1, 4, (2, T), generator=gen)  # many BOS (id 1)
    starts = segment_starts(ids, BOS_ID, max_len)
    allowed = (starts[:, :, None] == starts[:, None, :]) & torch.ones(T, T, dtype=torch.bool).tril()
    full = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], enable_gqa=True)
    torch.testing.assert_close(document_attention(q, k, v, starts, max_len), full, atol=1e-6, rtol=0)


def test_packed_row_equals_each_document_alone():
    """Attention inside documents, rotary positions along the row: a document's logits are those of
    the document run on its own (RoPE sees only relative positions), whatever precedes it."""
    model = small_model(doc_max_len=64)
    lengths = (5, 12, 1, 9)
    row = docs(*lengths)
    packed = model(row)
    start = 0
    for n in lengths:
        alone = model(row[:, start:start + n])
        torch.testing.assert_close(packed[:, start:start + n], alone, atol=2e-5, rtol=0)
        start += n


def test_no_information_crosses_a_bos_or_a_segment_cut():
    """Changing every token before a BOS changes nothing at or after it; with doc_max_len = 8, a
    document's tokens 8 on see nothing of tokens 0–7 except through SmearGate at the cut (x_8 reads x_7)."""
    model = small_model()
    row = docs(6, 11, lead=3)  # BOS at 3 and 9
    other = row.clone()
    other[0, :9] = torch.where(other[0, :9] == BOS_ID, BOS_ID, (other[0, :9] + 7) % 62 + 2)
    assert not torch.equal(row, other)
    torch.testing.assert_close(model(other)[:, 9:], model(row)[:, 9:], atol=0, rtol=0)
    # the cut at 9 + 8 = 17: only the smear carries token 16 into token 17
    changed = row.clone()
    changed[0, 9 + 1:9 + 7] = (changed[0, 9 + 1:9 + 7] + 5) % 62 + 2  # tokens 10–15, not 16
    torch.testing.assert_close(model(changed)[:, 17:], model(row)[:, 17:], atol=0, rtol=0)


def test_smear_gate_definition():
    """x_t + λ·σ(W·x_t[:w])·x_{t−1} on the raw embedding, nothing at t = 0 or where token t is BOS."""
    model = small_model()
    ids = docs(4, 3, lead=2)
    x = model.tok_emb(ids)[0]
    lam, w = model.smear_lambda.item(), model.smear_gate[0]
    expected = x.clone()
    for t in range(1, ids.size(1)):
        if ids[0, t] != BOS_ID:
            expected[t] = x[t] + lam * torch.sigmoid(x[t, :6] @ w) * x[t - 1]
    torch.testing.assert_close(model._smear(x[None], ids)[0], expected, atol=1e-6, rtol=0)


def test_sparse_attention_gate_scales_each_head_by_its_sigmoid():
    """Head h's output (after XSA) × σ(scale·W_h·x[:w]), x the attention's input (the normed block input)."""
    gated = small_model(doc_max_len=0, attn_gate_scale=0.5)
    plain = GPT(dataclasses.replace(gated.cfg, attn_gate=False))
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.endswith("out_gate")})
    seen = {}
    for name, model in (("gated", gated), ("plain", plain)):
        attn = model.blocks[0].attn
        attn.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__((name, "x"), a[0]))
        attn.proj.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__((name, "y"), a[0]))
        model(docs(10))  # block 0 runs once, in the encoder, on the same stream in both models
    x = seen[("gated", "x")]
    gate = torch.sigmoid(0.5 * x[..., :6] @ gated.blocks[0].attn.out_gate.T)  # (1, T, H)
    y_plain = seen[("plain", "y")].view(1, 10, 4, 8)
    torch.testing.assert_close(seen[("gated", "y")].view(1, 10, 4, 8), y_plain * gate[..., None], atol=1e-6, rtol=0)


def test_two_lane_decoder_definition():
    """Blocks 0–1 run as usual (the encoder half, even at or past two_lane_start), then at block 2 both
    lanes start as x; the skip enters lane 0; attention reads lane 0 mixed with x0, the MLP lane 1;
    lane j ← resid[j]·lane_j + post[0, j]·attn_out + post[1, j]·mlp_out; the head reads the mean."""
    model = small_model(num_loops=1, loop_start=-1, loop_end=-1, two_lane_start=1, doc_max_len=0,
                        smear_gate=False)
    ids = docs(12)
    cos, sin = model.rotary(12, ids.device)
    x = x0 = norm(model.tok_emb(ids))
    enc0 = model.blocks[0](x, x0, cos, sin)
    enc1 = model.blocks[1](enc0, x0, cos, sin)
    lane0, lane1 = model._add_skip(enc1, enc1, 0), enc1  # decoder application 0 pairs with encoder output 1
    for layer, skip in ((2, enc1), (3, enc0)):
        b, r, p = model.blocks[layer], model.lane_resid_scales[layer], model.lane_post_scales[layer]
        if layer == 3:
            lane0 = model._add_skip(lane0, skip, 1)
        a = b.attn_scale * b.attn(norm(b.resid_mix[0] * lane0 + b.resid_mix[1] * x0) * b.norm_scale, cos, sin)
        m = b.mlp_scale * b.mlp(norm(lane1) * b.norm_scale)
        lane0, lane1 = r[0] * lane0 + p[0, 0] * a + p[1, 0] * m, r[1] * lane1 + p[0, 1] * a + p[1, 1] * m
    logits = F.linear(norm(0.5 * (lane0 + lane1)), model.tok_emb.weight)
    logits = 30.0 * torch.tanh(logits / 30.0)
    torch.testing.assert_close(model(ids), logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("changes, message", [
    ({"two_lane_start": 4}, "above loop_end"),
    ({"parallel_start": 9}, "set one of them to -1"),
    ({"loop_start": -1, "loop_end": -1}, "needs loop_start..loop_end"),
    ({"gate_window": 0}, "gate_window must be in 1..model_dim"),
    ({"doc_max_len": -1}, "doc_max_len must be >= 0"),
])
def test_bad_frontier_keys_are_refused(changes, message):
    with pytest.raises(UserError, match=message):
        resolve_config(TrainConfig, "frontier", overrides=tuple(f"{k}={v}" for k, v in changes.items()))


def test_new_keys_default_off():
    cfg = ModelConfig()
    assert (cfg.smear_gate, cfg.attn_gate, cfg.two_lane_start, cfg.doc_max_len) == (False, False, -1, 0)
    assert not TrainConfig().train_packed_rows and TrainConfig().train_row_len == TrainConfig().train_seq_len
