"""Two grouping options of the pgseg family that are not the reference's: the multi-label loss read group by group
(`train-pgseg --multi-label-pool match`) and k-means steps of the assignment (`--assign-iters`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vpltool.models.text.pgseg.model import build_model, tiny_config
from vpltool.models.text.pgseg.targets import distinct_prompts, match_groups


def test_padding_captions_and_repeated_prompts_get_no_row():
    caption = torch.tensor([[9, 9, 9], [8, 8, 8]])
    prompts = torch.tensor([[[1, 0, 0], [2, 0, 0], [9, 9, 9]],  # the caption pads the third
                            [[3, 0, 0], [3, 0, 0], [4, 0, 0]]])  # the second repeats the first
    assert distinct_prompts(prompts, caption).tolist() == [[True, True, False], [True, False, True]]


def test_prompts_take_distinct_groups_of_largest_summed_similarity():
    sim = torch.tensor([[[0.9, 0.8, 0.1], [0.85, 0.2, 0.1]]])
    # greedy would give both prompts group 0; the best one-to-one sum is 0.8 + 0.85
    assert match_groups(sim, torch.tensor([[True, True]])).tolist() == [[1, 0]]
    # an invalid prompt takes no group away from a valid one
    assert match_groups(sim, torch.tensor([[False, True]]))[0, 1].item() == 0


def _model(k: int):
    cfg = tiny_config(npr=False, multi_label=k, multi_label_pool="match", multi_positive=True)
    return build_model(cfg)


def _tokens(b: int, k: int) -> torch.Tensor:
    """Caption ``100 + i``; image ``i``'s prompts are nouns ``2 i`` and ``2 i + 1`` (every prompt distinct)."""
    tok = torch.zeros(b, 1 + k, 4, dtype=torch.long)
    for i in range(b):
        tok[i, 0, 0] = 100 + i
        for j in range(k):
            tok[i, 1 + j, 0] = k * i + j + 1
    return tok


def test_one_group_for_two_nouns_costs_more_than_two_groups():
    b, k, g, d = 3, 2, 8, 16
    model = _model(k)
    nouns = torch.eye(d)[: b * k].reshape(b, k, d)
    apart = torch.zeros(b, g, d)
    apart[:, :k] = nouns  # each noun its own group
    merged = torch.zeros(b, g, d)
    merged[:, 0] = F.normalize(nouns.sum(1), dim=-1)  # one group between both nouns
    merged[:, 1:] = torch.randn(b, g - 1, d, generator=torch.Generator().manual_seed(0)) * 0.01
    apart[:, k:] = merged[:, k:]
    tokens = _tokens(b, k)
    loss_apart = model.matched_label_loss(apart, nouns, tokens)
    loss_merged = model.matched_label_loss(merged, nouns, tokens)
    assert loss_apart < loss_merged - 1.0


def test_the_match_loss_trains_the_assignment():
    k = 2
    model = _model(k).train()
    out = model.forward_train(torch.randn(2, 3, 32, 32), _tokens(2, k)[..., :1].expand(-1, -1, 77).contiguous())
    out["loss"].backward()
    assign = model.img_encoder.layers[1].downsample.assign.q_proj.weight.grad
    assert out["multi_label"].item() > 0 and assign.abs().sum() > 0


def test_more_prompts_than_final_groups_is_refused():
    with pytest.raises(ValueError, match="its own final group"):
        tiny_config(npr=False, multi_label=9, multi_label_pool="match")


def test_one_assignment_step_is_the_reference_arithmetic_and_more_steps_move_the_queries():
    """``assign_iters`` 1 is the reference's assignment to the bit; with 3 the queries take k-means steps first,
    so the assignment differs, and a group that holds no token keeps its query (no division by nothing)."""
    from vpltool.models.text.pgseg.assign import AssignAttention

    torch.manual_seed(0)
    one, three = AssignAttention(16, iters=1).eval(), AssignAttention(16, iters=3).eval()
    three.load_state_dict(one.state_dict())
    query, key = torch.randn(2, 4, 16), torch.randn(2, 30, 16)
    q = one.q_proj(query)
    k = one.k_proj(key)
    raw = (q @ k.transpose(-2, -1)) * one.scale
    _, maps = one(query, key)
    assert torch.equal(maps["soft"][:, 0], raw.softmax(-2))
    _, moved = three(query, key)
    assert not torch.allclose(moved["soft"], maps["soft"])
    assert torch.isfinite(moved["soft"]).all()
    # one group far from every key: it holds no token and its query is kept
    far = query.clone()
    far[:, 0] = 1e3 * torch.sign(torch.randn(16))
    _, kept = three(far, key)
    assert torch.isfinite(kept["soft"]).all()


def test_assign_steps_below_one_are_refused():
    with pytest.raises(ValueError, match="assign_iters"):
        tiny_config(assign_iters=0)


def test_without_the_centre_residual_a_group_is_what_it_holds():
    """``center_residual`` False: a group that holds no token outputs the same vector for every image (it has seen
    the image through attention, but says nothing of it); with the reference's residual it differs per image."""
    from vpltool.models.text.pgseg.groupvit import GroupingBlock

    torch.manual_seed(0)
    outs = {}
    for residual in (True, False):
        block = GroupingBlock(16, 16, 1, 4, 3, center_residual=residual).eval()
        with torch.no_grad():
            block.assign.q_proj.weight.zero_()
            block.assign.q_proj.bias.copy_(torch.tensor([0.0] * 16))
            block.assign.k_proj.weight.zero_()
            block.assign.k_proj.bias.zero_()
        # every logit 0: the argmax takes group 0 for every token, groups 1 and 2 hold nothing
        torch.manual_seed(1)
        x, tokens = torch.randn(2, 10, 16), torch.randn(2, 4, 16)
        out, maps, _ = block(x, tokens)
        assert maps["hard"][:, 0, 0].sum().item() == 20
        outs[residual] = out
    assert torch.allclose(outs[False][0, 1:], outs[False][1, 1:])
    assert not torch.allclose(outs[True][0, 1:], outs[True][1, 1:])


def test_by_distance_the_nearest_centre_takes_a_token_not_the_longest_query():
    from vpltool.models.text.pgseg.assign import AssignAttention

    blocks = {m: AssignAttention(4, metric=m).eval() for m in ("dot", "distance")}
    for block in blocks.values():
        with torch.no_grad():
            for proj in (block.q_proj, block.k_proj):
                proj.weight.copy_(torch.eye(4))
                proj.bias.zero_()
    near = torch.tensor([1.0, 1.0, 0.0, 0.0])
    query = torch.stack([torch.tensor([10.0, 0.0, 0.0, 0.0]), near])[None]  # [1, 2, 4]: a long query, a near one
    key = (near + 0.1 * torch.randn(5, 4, generator=torch.Generator().manual_seed(0)))[None]
    picks = {m: b(query, key)[1]["soft"][0, 0].argmax(0).tolist() for m, b in blocks.items()}
    assert picks == {"dot": [0] * 5, "distance": [1] * 5}


def _clusters(sizes: list[int], dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[1, sum(sizes), dim]`` tokens in tight clusters around far-apart centres, and each token's cluster."""
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.eye(dim)[:len(sizes)]
    label = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    tokens = centres[label] + 0.1 * torch.randn(len(label), dim, generator=g)
    perm = torch.randperm(len(label), generator=g)
    return tokens[perm][None], label[perm]


def test_farthest_point_seeds_take_one_token_of_each_cluster_small_ones_first():
    """A large background cluster and three small object clusters: four seeds land one in each, and the first
    is not the background's (the farthest key from the image's mean lies in a small cluster)."""
    from vpltool.models.text.pgseg.assign import farthest_point_seeds

    tokens, label = _clusters([130, 5, 5, 4])
    seeds = farthest_point_seeds(tokens, 4)[0]
    assert sorted(label[seeds].tolist()) == [0, 1, 2, 3]
    assert label[seeds[0]].item() != 0


def test_seeded_from_the_tokens_each_cluster_gets_its_own_group_whatever_the_group_tokens():
    """``init`` "tokens": the groups follow the image's own clusters even when every group token is the same
    vector; from the group tokens' queries (the reference's) equal queries put every token in one group."""
    from vpltool.models.text.pgseg.assign import AssignAttention

    tokens, label = _clusters([100, 6, 6, 4])
    groups = {}
    for init in ("query", "tokens"):
        block = AssignAttention(8, metric="distance", iters=3, init=init).eval()
        with torch.no_grad():
            for proj in (block.q_proj, block.k_proj):
                proj.weight.copy_(torch.eye(8))
                proj.bias.zero_()
        query = torch.ones(1, 4, 8)  # four identical group tokens
        groups[init] = block(query, tokens)[1]["hard"][0, 0].argmax(0)
    assert groups["query"].unique().numel() == 1
    found = groups["tokens"]
    # one group per cluster, and every token of a cluster in its cluster's group
    assert found.unique().numel() == 4
    for c in range(4):
        assert found[label == c].unique().numel() == 1


def test_seeded_from_the_tokens_the_keys_get_gradients():
    """The seeds and the k-means memberships carry no gradient, the centres (means of keys) and the assignment
    do: the key projection learns from the loss."""
    from vpltool.models.text.pgseg.assign import AssignAttention

    torch.manual_seed(0)
    block = AssignAttention(8, metric="distance", iters=2, init="tokens").train()
    out, _ = block(torch.randn(2, 4, 8), torch.randn(2, 20, 8))
    out.pow(2).sum().backward()
    assert block.k_proj.weight.grad.abs().sum() > 0
    assert block.v_proj.weight.grad.abs().sum() > 0
    assert block.q_proj.weight.grad is None  # the group tokens' queries are not read


@pytest.mark.parametrize("overrides", [dict(assign_init="tokens", assign_metric="distance"),
                                       dict(assign_init="tokens", center_residual=False),
                                       dict(assign_init="centres")])
def test_token_seeds_without_distance_or_with_the_centre_residual_are_refused(overrides):
    with pytest.raises(ValueError, match="assign_init"):
        tiny_config(**overrides)


def test_a_model_seeded_from_the_tokens_trains_a_step():
    torch.manual_seed(0)
    model = build_model(tiny_config(npr=False, assign_init="tokens", assign_metric="distance",
                                    center_residual=False, assign_iters=2)).train()
    feats = model.image_features(torch.randn(3, 3, 32, 32))
    feats["pooled"].pow(2).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "assign.k_proj" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_seeded_from_the_tokens_a_centre_is_the_mean_of_its_tokens_and_an_empty_group_keeps_its_token():
    """NPR matches the grouping's centres with its prototypes through normalised similarities: with token seeds
    a group's centre is the mean of the (normalised) tokens it holds, and a group that holds none keeps its group
    token, never a zero vector (whose normalisation has no finite gradient)."""
    from vpltool.models.text.pgseg.groupvit import GroupingBlock

    torch.manual_seed(0)
    block = GroupingBlock(8, 8, 1, 6, 6, center_residual=False, assign_metric="distance", assign_iters=2,
                          assign_init="tokens").eval()
    a, b = torch.randn(2, 8)
    tokens = torch.stack([a] * 20 + [b] * 5)[None]  # two distinct tokens, six groups: four hold nothing
    with torch.no_grad():
        _, maps, center = block(tokens, torch.randn(1, 6, 8))
        held = maps["hard"][0, 0]  # [G, L]
        normed = block.norm_x(tokens)[0]
    assert (held.sum(-1) == 0).any()
    for g in range(6):
        if held[g].sum() > 0:
            assert torch.allclose(center[0, g], normed[held[g] > 0].mean(0), atol=1e-5)
        else:
            assert center[0, g].norm() > 0.1
