"""Unpooling against hand-computed tensors."""
import pytest
import torch
import torch.nn.functional as F

from recondec.models.backbones import PoolSpec
from recondec.models.unpool import fixed_unpool, switch_unpool

P2 = PoolSpec(2, 2)
P3 = PoolSpec(3, 2)  # AlexNet's overlapping pool


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def test_fixed_unpool_2x2_writes_bottom_right_cell():
    out = fixed_unpool(t([[1, 2], [3, 4]]), P2, (4, 4))
    expected = t([[0, 0, 0, 0], [0, 1, 0, 2], [0, 0, 0, 0], [0, 3, 0, 4]])
    assert torch.equal(out, expected)


def test_fixed_unpool_3x3_stride2_writes_window_centre():
    out = fixed_unpool(t([[1, 2], [3, 4]]), P3, (5, 5))
    expected = torch.zeros(5, 5)
    expected[1, 1], expected[1, 3], expected[3, 1], expected[3, 3] = 1, 2, 3, 4
    assert torch.equal(out[0, 0], expected)


def test_fixed_unpool_odd_size_keeps_the_tail_zero():
    out = fixed_unpool(t([[1, 2], [3, 4]]), P2, (5, 5))  # a 5x5 map pooled 2x2/2 gives 2x2
    assert out.shape[-2:] == (5, 5)
    assert out[0, 0, 4].abs().sum() == 0 and out[0, 0, :, 4].abs().sum() == 0
    assert out[0, 0, 3, 3] == 4


def test_switch_unpool_places_values_at_recorded_argmax():
    x = t([[0, 5, 1, 0], [2, 0, 0, 7], [0, 0, 3, 0], [9, 0, 0, 4]])
    pooled, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    assert torch.equal(pooled, t([[5, 7], [9, 4]]))
    out = switch_unpool(pooled, idx, P2, (4, 4))
    expected = t([[0, 5, 0, 0], [0, 0, 0, 7], [0, 0, 0, 0], [9, 0, 0, 4]])
    assert torch.equal(out, expected)


def test_switch_unpool_overlapping_hits_are_averaged():
    # a 1x5 row pooled 1x3 / stride 2: both windows may record column 2; the reference averages them
    pool = PoolSpec(3, 2)
    values = t([[6.0, 2.0]])
    switches = torch.tensor([[[[2, 2]]]])
    out = switch_unpool(values, switches, pool, (1, 5))
    assert torch.equal(out, t([[0, 0, 4.0, 0, 0]]))
    switches = torch.tensor([[[[0, 4]]]])  # no collision: plain placement
    assert torch.equal(switch_unpool(values, switches, pool, (1, 5)), t([[6.0, 0, 0, 0, 2.0]]))


@pytest.mark.parametrize("pool,size", [(P2, 8), (P2, 7), (P3, 13), (P3, 14)])
def test_maxpool_of_switch_unpooled_returns_the_pooled_input(pool, size):
    torch.manual_seed(0)
    x = torch.rand(2, 3, size, size)  # non-negative, like post-ReLU activations
    pooled, idx = F.max_pool2d(x, pool.kernel_size, pool.stride, return_indices=True)
    up = switch_unpool(pooled, idx, pool, (size, size))
    assert up.shape == x.shape
    repooled = F.max_pool2d(up, pool.kernel_size, pool.stride)
    if pool.overlapping:  # a cell hit by k windows holds (k * v) / k: equal up to one rounding
        torch.testing.assert_close(repooled, pooled, rtol=1e-6, atol=0)
    else:
        assert torch.equal(repooled, pooled)


def test_switch_unpool_gradient_flows_to_values_only_and_is_deterministic():
    torch.manual_seed(0)
    x = torch.rand(1, 2, 6, 6)
    pooled, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    v = pooled.clone().requires_grad_(True)
    torch.use_deterministic_algorithms(True)
    try:
        out = switch_unpool(v, idx, P2, (6, 6))
    finally:
        torch.use_deterministic_algorithms(False)
    g = torch.randn_like(out)
    out.backward(g)
    # d out / d v gathers the upstream gradient at each switch position
    assert torch.equal(v.grad, g.flatten(2).gather(2, idx.flatten(2)).view_as(v))
    assert not idx.dtype.is_floating_point


@pytest.mark.parametrize("pool,size", [(P2, 8), (P2, 7), (P3, 13)])
def test_channels_last_maps_unpool_to_the_same_values_and_stay_channels_last(pool, size):
    torch.manual_seed(0)
    x = torch.rand(2, 5, size, size)
    pooled, idx = F.max_pool2d(x, pool.kernel_size, pool.stride, return_indices=True)
    out_size = (size, size)
    cl = torch.channels_last
    pooled_cl = pooled.contiguous(memory_format=cl).requires_grad_(True)
    pooled_ref = pooled.clone().requires_grad_(True)
    for unpool in (lambda v, i: switch_unpool(v, i, pool, out_size), lambda v, i: fixed_unpool(v, pool, out_size)):
        out_cl, out_ref = unpool(pooled_cl, idx.contiguous(memory_format=cl)), unpool(pooled_ref, idx)
        assert out_cl.is_contiguous(memory_format=cl) and not out_cl.is_contiguous()
        assert torch.equal(out_cl, out_ref)
        g = torch.randn_like(out_ref)
        (grad_cl,), (grad_ref,) = torch.autograd.grad(out_cl, pooled_cl, g), torch.autograd.grad(out_ref, pooled_ref, g)
        assert torch.equal(grad_cl, grad_ref)
