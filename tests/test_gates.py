"""The binary gate function and the weight-dependent gate module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wgates_plugin.errors import ConfigError
from wgates_plugin.gates import BinaryGate, Producer, ScoreInput, WeightGate, binary_gate, bounded_mask


def paper_derivative(s: torch.Tensor) -> torch.Tensor:
    """Eq. (7), written out branch by branch."""
    out = torch.zeros_like(s)
    left = (s >= -0.5) & (s < 0)
    right = (s >= 0) & (s < 0.5)
    out[left] = 2 + 4 * s[left]
    out[right] = 2 - 4 * s[right]
    return out


def test_forward_is_sign_plus_one_over_two_with_zero_kept():
    s = torch.tensor([-2.0, -1e-6, 0.0, 1e-6, 3.0])
    torch.testing.assert_close(binary_gate(s), torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))
    nonzero = s[s != 0]
    torch.testing.assert_close(binary_gate(nonzero), (torch.sign(nonzero) + 1) / 2)


def test_backward_matches_eq7_at_many_points():
    s = torch.linspace(-1.0, 1.0, 4001, dtype=torch.float64).requires_grad_()
    upstream = torch.randn(4001, dtype=torch.float64)
    (BinaryGate.apply(s) * upstream).sum().backward()
    torch.testing.assert_close(s.grad, upstream * paper_derivative(s.detach()), rtol=0, atol=1e-12)


def test_backward_peaks_at_zero_and_vanishes_outside_window():
    s = torch.tensor([-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75], requires_grad=True)
    binary_gate(s).sum().backward()
    torch.testing.assert_close(s.grad, torch.tensor([0.0, 0.0, 1.0, 2.0, 1.0, 0.0, 0.0]))


def _conv_gate(**kw) -> tuple[nn.Conv2d, WeightGate]:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3)
    rows = torch.arange(8)
    return conv, WeightGate([Producer(conv, rows, rows)], 8, **kw)


def test_initialization_opens_every_gate_inside_the_gradient_window():
    _, gate = _conv_gate()
    scores = gate.unit_scores()
    assert torch.all(gate() == 1)
    assert torch.all((scores > 0) & (scores < 0.5))
    gate().sum().backward()
    assert gate.fc.grad is not None and gate.fc.grad.abs().sum() > 0


def test_score_is_the_paper_fc_of_the_reshaped_filters():
    conv, gate = _conv_gate()
    with torch.no_grad():
        gate.fc.normal_()
    expected = conv.weight.reshape(8, -1) @ gate.fc + gate.bias  # (C_out,) Eq. (2) plus the bias
    torch.testing.assert_close(gate.unit_scores(), expected)


def test_group_score_is_the_sum_of_per_producer_scores():
    torch.manual_seed(1)
    a, b = nn.Conv2d(3, 4, 1), nn.Conv2d(5, 4, 3)
    idx = torch.arange(4)
    gate = WeightGate([Producer(a, idx, idx), Producer(b, idx, idx.flip(0))], 4)
    with torch.no_grad():
        gate.fc.normal_()
        gate.bias.zero_()
    fa, fb = gate.fc[:3], gate.fc[3:]
    expected = a.weight.reshape(4, -1) @ fa + (b.weight.reshape(4, -1) @ fb).flip(0)
    torch.testing.assert_close(gate.unit_scores(), expected)


def test_weight_grad_option_controls_gradient_into_conv_weights():
    for weight_grad in (False, True):
        conv, gate = _conv_gate(weight_grad=weight_grad)
        gate.unit_scores().sum().backward()
        assert (conv.weight.grad is not None) == weight_grad


def test_tied_gate_repeats_the_pattern_over_conv_groups():
    conv = nn.Conv2d(8, 8, 3, groups=2)
    rows = torch.arange(8)
    gate = WeightGate([Producer(conv, rows, rows)], 8, tie=2)
    with torch.no_grad():
        gate.fc.normal_()
        gate.bias.fill_(0.05)
    g = gate()
    assert g.shape == (8,)
    torch.testing.assert_close(g[:4], g[4:])
    with pytest.raises(ConfigError, match="tie=3 must divide the group's 8 channels"):
        WeightGate([Producer(conv, rows, rows)], 8, tie=3)


def test_count_bounds_open_the_best_and_close_the_worst():
    scores = torch.tensor([-0.3, -0.2, -0.1, 0.4, 0.3, 0.2])
    gate = binary_gate(scores)
    torch.testing.assert_close(bounded_mask(scores, gate, 4, 6), torch.tensor([0.0, 0, 1, 1, 1, 1]))
    torch.testing.assert_close(bounded_mask(scores, gate, 1, 2), torch.tensor([0.0, 0, 0, 1, 1, 0]))
    torch.testing.assert_close(bounded_mask(scores, gate, 1, 6), gate)


def test_bounds_hold_in_forward_while_gradient_still_flows():
    _, gate = _conv_gate(min_units=3, max_units=5)
    with torch.no_grad():
        gate.bias.fill_(-0.1)  # every score negative: all gates would close
    g = gate()
    assert int(g.sum()) == 3
    g.sum().backward()
    assert gate.bias.grad is not None and gate.bias.grad != 0


def test_constant_input_cannot_tell_filters_apart():
    _, gate = _conv_gate(score_input=ScoreInput.CONSTANT)
    with torch.no_grad():
        gate.fc.normal_()
    scores = gate.unit_scores()
    assert torch.allclose(scores, scores[0].expand_as(scores))


def test_freeze_fixes_gates_and_round_trips_through_state_dict():
    _, gate = _conv_gate()
    mask = torch.tensor([1.0, 0, 1, 0, 1, 1, 0, 1])
    gate.freeze(mask)
    torch.testing.assert_close(gate(), mask)
    _, fresh = _conv_gate()
    fresh.load_state_dict(gate.state_dict())
    assert fresh.is_frozen
    torch.testing.assert_close(fresh(), mask)
    fresh.unfreeze()
    assert not fresh.is_frozen and torch.all(fresh() == 1)


def test_loading_a_gate_of_another_width_is_refused():
    _, gate = _conv_gate()
    gate.freeze()
    conv = nn.Conv2d(3, 4, 3)
    rows = torch.arange(4)
    other = WeightGate([Producer(conv, rows, rows)], 4)
    with pytest.raises(ConfigError, match="has 8 channels, this one 4"):
        other.load_state_dict(gate.state_dict(), strict=False)
