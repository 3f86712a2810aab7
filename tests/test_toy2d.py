import pytest
import torch

from scfm.data.toy2d import TOY2D_NAMES, sample_toy2d


def test_toy2d_names_include_the_standard_five():
    assert {"checkerboard", "8gaussians", "moons", "spirals", "rings"} <= set(TOY2D_NAMES)


@pytest.mark.parametrize("name", TOY2D_NAMES)
def test_toy2d_sampler_is_reproducible_with_same_generator_seed(name):
    a = sample_toy2d(name, 500, torch.Generator().manual_seed(3))
    b = sample_toy2d(name, 500, torch.Generator().manual_seed(3))
    c = sample_toy2d(name, 500, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", TOY2D_NAMES)
def test_toy2d_samples_are_float32_n_by_2_roughly_unit_scale(name):
    x = sample_toy2d(name, 4000, torch.Generator().manual_seed(0))
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    assert x.abs().max() <= 4.0
    assert 0.5 < x.std(dim=0).min() and x.std(dim=0).max() < 2.5


def test_toy2d_sampler_does_not_touch_global_rng():
    state = torch.get_rng_state()
    sample_toy2d("moons", 100, torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())


def test_checkerboard_only_fills_cells_with_even_index_sum():
    x = sample_toy2d("checkerboard", 2000, torch.Generator().manual_seed(0))
    assert (torch.floor(x).sum(dim=1).remainder(2) == 0).all()


def test_unknown_toy2d_name_raises_value_error_listing_valid_names():
    with pytest.raises(ValueError, match="checkerboard"):
        sample_toy2d("swissroll3d", 10, torch.Generator())
