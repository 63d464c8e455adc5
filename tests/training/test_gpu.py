"""The GPU path on a GPU (skipped without CUDA): trainer=gpu (bf16 autocast, channels_last, fused optimiser,
cuDNN) trains every variant as the fp32 CPU step does, and channels_last unpooling on CUDA equals the NCHW one."""
import pytest
import torch
import torch.nn.functional as F

from recondec.models.backbones import PoolSpec
from recondec.models.unpool import fixed_unpool, switch_unpool

from ..conftest import VARIANTS
from .test_fast_paths import agreement, first_steps, fp32_steps

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_trainer_gpu_trains_every_variant_as_the_fp32_cpu_step_does(compose_cfg, variant):
    ref_losses, ref_update = fp32_steps(compose_cfg, variant)
    losses, update = first_steps(compose_cfg, variant, "trainer=gpu", "trainer.deterministic=false")
    assert all(abs(a - b) <= 0.05 * abs(b) for a, b in zip(losses, ref_losses)), (losses, ref_losses)
    assert agreement(update.cpu(), ref_update.cpu()) > 0.9  # the reference: fp32, on the default device


@pytest.mark.parametrize("kernel,stride,size", [(2, 2, 14), (3, 2, 13)])
def test_channels_last_unpooling_on_cuda_equals_nchw(kernel, stride, size):
    torch.manual_seed(0)
    x = torch.rand(4, 16, size, size, device="cuda", dtype=torch.bfloat16)
    pooled, idx = F.max_pool2d(x, kernel, stride, return_indices=True)
    pool, cl = PoolSpec(kernel, stride), torch.channels_last
    size2 = (size, size)
    for unpool in (lambda v, i: switch_unpool(v, i, pool, size2), lambda v, i: fixed_unpool(v, pool, size2)):
        out = unpool(pooled.contiguous(memory_format=cl), idx.contiguous(memory_format=cl))
        assert out.is_contiguous(memory_format=cl)
        assert torch.equal(out, unpool(pooled, idx))
