"""VideoVAE: shapes, compression, tiled vs untiled numbers, Allegro-specific ops, KL and config errors.

Parameters are drawn with numpy from `jax.eval_shape(init)`: compiling `init` (about 200 random
initialisers) takes most of a minute on a small CPU, the forward pass a few seconds.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from t2v_jax.models import video_vae as vv


def _tiny_config():
    cfg = vv.default_config()
    cfg.block_out_channels = (8, 16, 16)
    cfg.norm_num_groups = 4
    cfg.tile_frames = 16
    cfg.tile_size = 16
    cfg.tile_overlap_frames = 8
    cfg.tile_overlap = (8, 8)
    return cfg


def _numpy_params(vae, video_shape, seed, *, zero_last_temporal_conv):
    """Random parameters of the right shapes; optionally each temporal block's last conv zeroed, as init."""
    rngs = {"params": jax.random.key(0), "sample": jax.random.key(1)}
    shapes = nn.unbox(jax.eval_shape(vae.init, rngs, jnp.zeros(video_shape)))
    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in traverse_util.flatten_dict(shapes["params"]).items():
        if path[-1] == "kernel":
            value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
            if zero_last_temporal_conv and path[-2] == "conv4":
                value = np.zeros(leaf.shape)
        elif path[-1] == "scale":
            value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
        else:
            value = 0.1 * rng.normal(size=leaf.shape)
            if zero_last_temporal_conv and path[-2] == "conv4":
                value = np.zeros(leaf.shape)
        flat[path] = jnp.asarray(value, jnp.float32)
    return {"params": traverse_util.unflatten_dict(flat)}


@pytest.fixture(scope="module")
def model():
    cfg = _tiny_config()
    vae = vv.VideoVAE(cfg)
    params = _numpy_params(vae, (1, 4, 16, 16, 3), 0, zero_last_temporal_conv=True)
    encode = jax.jit(functools.partial(vv.vae_encode, vae), static_argnames="tiled")
    decode = jax.jit(functools.partial(vv.vae_decode, vae), static_argnames="tiled")
    return cfg, vae, params, encode, decode


def _video(shape, seed):
    """Smooth-ish random video in [-1, 1]."""
    return jnp.tanh(jax.random.normal(jax.random.key(seed), shape))


def test_compression_ratios_and_shapes(model):
    cfg, vae, params, encode, decode = model
    assert (vv.temporal_compression(cfg), vv.spatial_compression(cfg)) == (2, 4)
    allegro = vv.allegro_config()
    assert (vv.temporal_compression(allegro), vv.spatial_compression(allegro)) == (4, 8)
    default = vv.default_config()
    assert (vv.temporal_compression(default), vv.spatial_compression(default)) == (2, 4)
    video = jax.ShapeDtypeStruct((2, 8, 16, 24, 3), jnp.float32)
    for tiled in (False, True):
        latents = jax.eval_shape(functools.partial(encode, tiled=tiled), params, video)
        assert latents.shape == (2, 4, 4, 6, 4)
        assert jax.eval_shape(functools.partial(decode, tiled=tiled), params, latents).shape == video.shape


def test_allegro_architecture_size():
    """Allegro's VideoVAE is published as 175M parameters; this port has 174,955,751 (pinned, so that an
    accidental change to the architecture fails here) and encodes 88 frames to 22 latent frames."""
    vae = vv.VideoVAE(vv.allegro_config())
    shapes = jax.eval_shape(vae.init, {"params": jax.random.key(0), "sample": jax.random.key(1)},
                            jnp.zeros((1, 8, 16, 16, 3)))
    assert sum(leaf.size for leaf in jax.tree_util.tree_leaves(nn.unbox(shapes))) == 174_955_751
    latents = jax.eval_shape(functools.partial(vae.apply, method=vv.VideoVAE.encode), nn.unbox(shapes),
                             jnp.zeros((1, 88, 32, 48, 3)))
    assert latents[0].shape == (1, 22, 4, 6, 4)


def test_scaling_factor_and_posterior_sampling():
    """Latents leave vae_encode multiplied by scaling_factor and enter the decoder divided by it.

    A one-block VAE without down-sampling keeps the compile short; the scaling code does not care."""
    cfg = vv.default_config()
    cfg.update(block_out_channels=(4,), norm_num_groups=2, temporal_downsample=(False,),
               spatial_downsample=(False,), mid_attention=False)
    vae = vv.VideoVAE(cfg)
    params = _numpy_params(vae, (1, 4, 8, 8, 3), 1, zero_last_temporal_conv=False)
    cfg = cfg.copy_and_resolve_references()
    cfg.scaling_factor = 0.25
    scaled = vv.VideoVAE(cfg)

    @jax.jit
    def run(params, video, latents):
        mean, logvar = vae.apply(params, video, method=vv.VideoVAE.encode)
        draws = [vv.vae_encode(scaled, params, video, rng=jax.random.key(s), tiled=False) for s in (4, 5)]
        return dict(mean=mean, logvar=logvar, scaled_mean=vv.vae_encode(scaled, params, video, tiled=False),
                    draws=draws, decoded=vv.vae_decode(scaled, params, latents, tiled=False),
                    reference=vae.apply(params, latents / 0.25, method=vv.VideoVAE.decode))

    video = _video((1, 4, 8, 8, 3), 2)
    out = run(params, video, jax.random.normal(jax.random.key(3), (1, 4, 8, 8, 4)))
    np.testing.assert_allclose(out["scaled_mean"], 0.25 * out["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["decoded"], out["reference"], atol=1e-5)
    z_scores = (out["draws"][0] / 0.25 - out["mean"]) / jnp.exp(0.5 * out["logvar"])
    assert abs(float(z_scores.std()) - 1.0) < 0.15 and abs(float(z_scores.mean())) < 0.15
    assert float(jnp.abs(out["draws"][0] - out["draws"][1]).max()) > 1e-3
    recon = jax.eval_shape(functools.partial(vae.apply, rngs={"sample": jax.random.key(6)}), params, video)
    assert [x.shape for x in recon] == [video.shape, out["mean"].shape, out["mean"].shape]


def _interior_frames(num_frames, tile, overlap, margin):
    """Frames at least `margin` away from every edge of every tile covering them (video borders excepted)."""
    ok = np.ones(num_frames, bool)
    for start in vv.tile_starts(num_frames, tile, overlap):
        end = min(start + tile, num_frames)
        for f in range(start, end):
            if (start > 0 and f - start < margin) or (end < num_frames and end - 1 - f < margin):
                ok[f] = False
    return ok


def test_tiled_decode_matches_untiled_away_from_seams(model):
    """With the temporal blocks as `init` leaves them (identity: last conv zero), the decoder's receptive
    field in time is temp_conv_in (+-1 latent) and temp_conv_out (+-1 frame): pixel frame f depends on
    latents floor((f-1)/2)-1 .. floor((f+1)/2)+1, i.e. on pixel frames f-3 .. f+3. Frames >= 4 away
    from every tile edge must match the untiled decode (max abs diff < 1e-4); spatially the tile spans
    the whole 16x16 frame because per-frame GroupNorm sees the whole frame. Near the seams the tiles
    do differ, which shows the comparison can fail."""
    cfg, vae, params, encode, decode = model
    latents = jax.random.normal(jax.random.key(7), (1, 16, 4, 4, 4))
    full = np.asarray(decode(params, latents, tiled=False))
    tiled = np.asarray(decode(params, latents, tiled=True))
    assert len(vv.tile_starts(32, cfg.tile_frames, cfg.tile_overlap_frames)) == 3
    interior = _interior_frames(32, cfg.tile_frames, cfg.tile_overlap_frames, margin=4)
    assert interior.sum() >= 12
    diff_t = np.abs(full - tiled).max(axis=(0, 2, 3, 4))
    assert diff_t[interior].max() < 1e-4, diff_t
    assert diff_t[~interior].max() > 1e-3, diff_t


def test_tiled_encode_matches_untiled_away_from_seams(model):
    """Encoder at init: latent l reads pixel frames around 2l (temp_conv_in, +-1 frame) and its latent
    neighbours (temp_conv_out, +-1 latent), so it depends on pixel frames 2l-3 .. 2l+3. Latents whose
    pixel frames 2l-4 .. 2l+4 lie inside every covering tile must match (max abs diff < 1e-4)."""
    cfg, vae, params, encode, decode = model
    video = _video((1, 32, 16, 16, 3), 8)
    full = np.asarray(encode(params, video, tiled=False))
    tiled = np.asarray(encode(params, video, tiled=True))
    interior = _interior_frames(16, cfg.tile_frames // 2, cfg.tile_overlap_frames // 2, margin=2)
    assert interior.sum() >= 6
    diff_t = np.abs(full - tiled).max(axis=(0, 2, 3, 4))
    assert diff_t[interior].max() < 1e-4, diff_t
    assert diff_t[~interior].max() > 1e-4, diff_t


def _local_fn(x_bthwc):
    """A nonlinear decoder stand-in with a known receptive field: x(2,4,4) upsampling, then a 3x3x3 box
    filter with zero padding (+-1 output element per axis)."""
    y = jnp.repeat(jnp.repeat(jnp.repeat(x_bthwc, 2, axis=1), 4, axis=2), 4, axis=3)
    y = jnp.tanh(y) + 0.1 * y**2
    window = (1, 3, 3, 3, 1)
    return jax.lax.reduce_window(y, 0.0, jax.lax.add, window, (1,) * 5, "SAME")


def test_tiled_apply_blends_to_the_exact_result():
    """Pointwise fn: the blend weights sum to one, so tiling is exact everywhere (< 1e-5), even with an
    end-aligned last tile; local fn: exact (< 1e-4, float32 sums of 27 terms) wherever every covering
    tile contains the 3x3x3 window."""
    x = jax.random.normal(jax.random.key(9), (2, 7, 5, 6, 3))
    kwargs = dict(tile_thw=(3, 3, 4), overlap_thw=(1, 2, 2), in_unit_thw=(1, 1, 1), out_unit_thw=(2, 4, 4))

    def pointwise(v):
        return jnp.repeat(jnp.repeat(jnp.repeat(jnp.sin(3 * v), 2, axis=1), 4, axis=2), 4, axis=3)

    np.testing.assert_allclose(vv.tiled_apply(pointwise, x, **kwargs), pointwise(x), atol=1e-5)
    full = np.asarray(_local_fn(x))
    tiled = np.asarray(vv.tiled_apply(_local_fn, x, **kwargs))
    mask = np.ones(full.shape[1:4], bool)
    for axis, (size, tile, overlap, unit) in enumerate(zip((7, 5, 6), (3, 3, 4), (1, 2, 2), (2, 4, 4))):
        ok = _interior_frames(size * unit, tile * unit, overlap * unit, margin=1)
        mask &= np.expand_dims(ok, [a for a in range(3) if a != axis])
    assert mask.mean() > 0.4
    diff = np.abs(full - tiled).max(axis=(0, 4))
    assert diff[mask].max() < 1e-4
    assert diff[~mask].max() > 1e-3


def test_tile_starts_cover_the_video():
    assert vv.tile_starts(22, 6, 2) == (0, 4, 8, 12, 16)  # Allegro: 88 frames, 24-frame tiles, 8 overlap
    assert vv.tile_starts(90, 40, 15) == (0, 25, 50)  # 720 px high, 320 px tiles, 120 px overlap
    assert vv.tile_starts(160, 40, 10) == (0, 30, 60, 90, 120)  # 1280 px wide, 80 px overlap
    assert vv.tile_starts(9, 4, 2) == (0, 2, 4, 5)
    assert vv.tile_starts(3, 4, 2) == (0,)


def test_interleave_frames_matches_torch_unflatten_permute():
    """Allegro: h (B, 2C, T, H, W).unflatten(1, (2, -1)).permute(0, 2, 3, 1, 4, 5).flatten(2, 3)."""
    h_bcthw = np.random.default_rng(10).normal(size=(2, 6, 3, 2, 2)).astype(np.float32)
    b, c2, t, hh, ww = h_bcthw.shape
    ref = h_bcthw.reshape(b, 2, c2 // 2, t, hh, ww).transpose(0, 2, 3, 1, 4, 5)
    ref = ref.reshape(b, c2 // 2, 2 * t, hh, ww)
    ours = vv.interleave_frames(jnp.asarray(h_bcthw.transpose(0, 2, 3, 4, 1)))
    np.testing.assert_array_equal(np.asarray(ours).transpose(0, 4, 1, 2, 3), ref)


def test_kl_divergence_matches_closed_form():
    rng = np.random.default_rng(11)
    mean, logvar = rng.normal(size=(2, 2, 3, 3, 4)), rng.normal(size=(2, 2, 3, 3, 4))
    ref = 0.5 * (mean**2 + np.exp(logvar) - 1 - logvar).reshape(2, -1).sum(-1)
    np.testing.assert_allclose(vv.kl_divergence(jnp.asarray(mean), jnp.asarray(logvar)), ref, rtol=1e-5)
    zeros = jnp.zeros((1, 2, 2, 2, 4))
    assert float(vv.kl_divergence(zeros, zeros)[0]) == 0.0
    samples = mean[:1, None] + np.exp(0.5 * logvar[:1, None]) * rng.normal(size=(1, 20000) + mean.shape[1:])
    m, lv = mean[:1, None], logvar[:1, None]
    log_ratio = 0.5 * (-((samples - m) ** 2) / np.exp(lv) - lv + samples**2)  # log q(z) - log p(z)
    monte_carlo = log_ratio.reshape(1, 20000, -1).sum(-1).mean()
    assert abs(monte_carlo - ref[0]) < 0.05 * ref[0]


def test_check_frames_and_config_errors():
    cfg = vv.allegro_config()
    vv.check_frames(cfg, 88)
    for frames in (0, 6, 87):
        with pytest.raises(ValueError, match="temporal_downsample"):
            vv.check_frames(cfg, frames)
    with pytest.raises(ValueError, match="spatial_downsample"):
        vv.check_resolution(cfg, 720, 1284)
    bad = vv.default_config()
    bad.spatial_downsample = (True, True, True)
    with pytest.raises(ValueError, match=r"spatial_downsample\[-1\]"):
        vv.validate_config(bad)
    bad = vv.default_config()
    bad.temporal_downsample = (True, False)
    with pytest.raises(ValueError, match="temporal_downsample has 2 entries"):
        vv.validate_config(bad)
    bad = vv.default_config()
    bad.tile_overlap = (6, 8)
    with pytest.raises(ValueError, match="tile_overlap"):
        vv.validate_config(bad)
    bad = vv.default_config()
    bad.tile_overlap_frames = 16
    with pytest.raises(ValueError, match="tile_overlap_frames"):
        vv.validate_config(bad)
    bad = vv.default_config()
    bad.temporal_upsample = (False, False, False)
    with pytest.raises(ValueError, match="temporal_upsample"):
        vv.validate_config(bad)
    bad = vv.default_config()
    bad.temporal_layers = False
    with pytest.raises(ValueError, match="temporal_layers=False cannot change the frame count"):
        vv.validate_config(bad)
    with pytest.raises(ValueError, match="temporal_downsample"):
        vv.vae_encode(vv.VideoVAE(vv.default_config()), {}, jnp.zeros((1, 5, 32, 32, 3)))


def test_temporal_upsample_defaults_to_the_mirrored_encoder():
    """Up block i undoes encoder block n-2-i; Allegro's explicit flags are exactly that mirror."""
    assert vv.temporal_upsample(vv.default_config()) == (False, True, False)
    allegro = vv.allegro_config()
    mirrored = allegro.copy_and_resolve_references()
    mirrored.temporal_upsample = None
    assert vv.temporal_upsample(mirrored) == tuple(allegro.temporal_upsample) == (False, True, True, False)


def test_without_temporal_layers_every_frame_is_coded_alone():
    """temporal_layers=False is a per-frame image VAE: a video's latents and reconstruction are those of its
    frames coded one by one, and no temporal parameter exists. With the temporal layers (and random
    parameters) frames mix, so the comparison can fail."""
    cfg = _tiny_config()
    cfg.temporal_downsample = (False, False, False)
    cfg.mid_attention = False
    video = _video((1, 4, 16, 16, 3), 3)
    frames_t1hwc = video[0][:, None]  # each frame a one-frame video

    def code(vae, params):
        apply = jax.jit(lambda v: vae.apply(params, v, sample_posterior=False)[:2])
        return apply(video), jax.vmap(lambda f: apply(f[None]))(frames_t1hwc)

    cfg.temporal_layers = False
    image_vae = vv.VideoVAE(cfg)
    params = _numpy_params(image_vae, video.shape, 4, zero_last_temporal_conv=False)
    assert not any("temp" in "/".join(path) for path in traverse_util.flatten_dict(params["params"]))
    (recon, mean), (recon_frames, mean_frames) = code(image_vae, params)
    np.testing.assert_allclose(mean[0], mean_frames[:, 0, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(recon[0], recon_frames[:, 0, 0], rtol=1e-5, atol=1e-5)

    cfg.temporal_layers = True
    video_vae = vv.VideoVAE(cfg)
    temporal_params = _numpy_params(video_vae, video.shape, 4, zero_last_temporal_conv=False)
    (recon, _), (recon_frames, _) = code(video_vae, temporal_params)
    assert float(jnp.abs(recon[0] - recon_frames[:, 0, 0]).max()) > 1e-2
