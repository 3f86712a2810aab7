"""ComfyUI loads every key of scfm's ComfyUI export (Flux, SD3, Wan) onto a weight of the right shape, with the
trained delta.

The key table here is a copy, as Python data and functions, of the part of ComfyUI's LoRA loader these files
meet, read from Comfy-Org/ComfyUI (formerly comfyanonymous/ComfyUI) at these commits:

- ``comfy/lora.py`` @ ec93dcacb96b922f7cb1417b3ba22bccb082df32: ``model_lora_keys_unet`` (the generic
  ``diffusion_model.`` entries every model gets, the SD3 and Flux entries built from diffusers names, among them
  OneTrainer's ``lora_transformer_``; no Wan-specific entry) and ``load_lora`` (what is loaded, what is reported
  as "lora key not loaded");
- ``comfy/weight_adapter/lora.py`` @ 6f98b150e065f1ffc788558574a887835068bd40: ``LoRAAdapter.load`` and
  ``calculate_weight`` (keys ``<x>.lora_up.weight`` / ``<x>.lora_down.weight`` / ``<x>.alpha``; the delta
  ``alpha / rank * up @ down`` reshaped to the target weight, or to its slice when the entry has an offset);
- ``comfy/utils.py`` @ 09708eae709a992a5684bed3595ce4d07e705b4e: ``flux_to_diffusers`` and ``mmdit_to_diffusers``
  (their ``.weight`` entries, which are all the LoRA table uses);
- ``comfy/model_detection.py`` @ 0b61ce5baa9ea03d8484729b7eb00e77c6fca227: ``convert_diffusers_mmdit`` (the native
  weights ComfyUI makes of a diffusers Flux / SD3 checkpoint) and the SD3 depth rule (hidden size // 64);
- ``comfy/ldm/wan/model.py`` @ 0c9a69aefdb1fcf6b9c60478aa9e511b01f8e96f: ``WanModel`` (text-to-video, qk_norm and
  cross_attn_norm on), whose weights are the native Wan state dict.
"""

import math

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, WanTransformer3DModel  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from scfm.export import export_kohya_lora  # noqa: E402
from scfm.models.flux import FluxAdapter  # noqa: E402
from scfm.models.sd3 import SD3Adapter  # noqa: E402
from scfm.models.wan import WAN_NATIVE_BLOCK_NAMES, WAN_NATIVE_NAMES, WanAdapter  # noqa: E402
from scfm.weights.lora import ADAPTER, LoraSpec, attach_lora, lora_named_parameters  # noqa: E402

pytestmark = pytest.mark.diffusers

RANK, ALPHA = 2, 4.0  # alpha != rank: the file's alpha must carry the scale 2
SUFFIXES = (".lora_up.weight", ".lora_down.weight", ".alpha")
SWAP = "swap_scale_shift"  # comfy.utils.swap_scale_shift: ComfyUI applies it to the delta (layout, not shape)

# ----------------------------------------------------------------------------- copy of comfy/utils.py

FLUX_DOUBLE_BLOCK = {  # flux_to_diffusers, double blocks: diffusers -> native (".weight" entries)
    "attn.to_out.0.weight": "img_attn.proj.weight",
    "norm1.linear.weight": "img_mod.lin.weight",
    "norm1_context.linear.weight": "txt_mod.lin.weight",
    "attn.to_add_out.weight": "txt_attn.proj.weight",
    "ff.net.0.proj.weight": "img_mlp.0.weight",
    "ff.net.2.weight": "img_mlp.2.weight",
    "ff_context.net.0.proj.weight": "txt_mlp.0.weight",
    "ff_context.net.2.weight": "txt_mlp.2.weight",
    "ff.linear_in.weight": "img_mlp.0.weight",  # LyCoris LoKr
    "ff.linear_out.weight": "img_mlp.2.weight",
    "ff_context.linear_in.weight": "txt_mlp.0.weight",
    "ff_context.linear_out.weight": "txt_mlp.2.weight",
    "attn.norm_q.weight": "img_attn.norm.query_norm.weight",
    "attn.norm_k.weight": "img_attn.norm.key_norm.weight",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.weight",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.weight",
}
FLUX_SINGLE_BLOCK = {
    "norm.linear.weight": "modulation.lin.weight",
    "proj_out.weight": "linear2.weight",
    "attn.norm_q.weight": "norm.query_norm.weight",
    "attn.norm_k.weight": "norm.key_norm.weight",
    "attn.to_qkv_mlp_proj.weight": "linear1.weight",  # Flux 2
    "attn.to_out.weight": "linear2.weight",  # Flux 2
}
FLUX_BASIC = [  # (native, diffusers[, function])
    ("final_layer.linear.weight", "proj_out.weight"),
    ("img_in.weight", "x_embedder.weight"),
    ("time_in.in_layer.weight", "time_text_embed.timestep_embedder.linear_1.weight"),
    ("time_in.out_layer.weight", "time_text_embed.timestep_embedder.linear_2.weight"),
    ("txt_in.weight", "context_embedder.weight"),
    ("vector_in.in_layer.weight", "time_text_embed.text_embedder.linear_1.weight"),
    ("vector_in.out_layer.weight", "time_text_embed.text_embedder.linear_2.weight"),
    ("guidance_in.in_layer.weight", "time_text_embed.guidance_embedder.linear_1.weight"),
    ("guidance_in.out_layer.weight", "time_text_embed.guidance_embedder.linear_2.weight"),
    ("final_layer.adaLN_modulation.1.weight", "norm_out.linear.weight", SWAP),
    ("pos_embed_input.weight", "controlnet_x_embedder.weight"),
]
MMDIT_BASIC = [
    ("context_embedder.weight", "context_embedder.weight"),
    ("t_embedder.mlp.0.weight", "time_text_embed.timestep_embedder.linear_1.weight"),
    ("t_embedder.mlp.2.weight", "time_text_embed.timestep_embedder.linear_2.weight"),
    ("x_embedder.proj.weight", "pos_embed.proj.weight"),
    ("y_embedder.mlp.0.weight", "time_text_embed.text_embedder.linear_1.weight"),
    ("y_embedder.mlp.2.weight", "time_text_embed.text_embedder.linear_2.weight"),
    ("final_layer.adaLN_modulation.1.weight", "norm_out.linear.weight", SWAP),
    ("final_layer.linear.weight", "proj_out.weight"),
]
MMDIT_BLOCK = [
    ("context_block.adaLN_modulation.1.weight", "norm1_context.linear.weight"),
    ("context_block.attn.proj.weight", "attn.to_add_out.weight"),
    ("context_block.mlp.fc1.weight", "ff_context.net.0.proj.weight"),
    ("context_block.mlp.fc2.weight", "ff_context.net.2.weight"),
    ("context_block.attn.ln_q.weight", "attn.norm_added_q.weight"),
    ("context_block.attn.ln_k.weight", "attn.norm_added_k.weight"),
    ("x_block.adaLN_modulation.1.weight", "norm1.linear.weight"),
    ("x_block.attn.proj.weight", "attn.to_out.0.weight"),
    ("x_block.attn.ln_q.weight", "attn.norm_q.weight"),
    ("x_block.attn.ln_k.weight", "attn.norm_k.weight"),
    ("x_block.attn2.proj.weight", "attn2.to_out.0.weight"),
    ("x_block.attn2.ln_q.weight", "attn2.norm_q.weight"),
    ("x_block.attn2.ln_k.weight", "attn2.norm_k.weight"),
    ("x_block.mlp.fc1.weight", "ff.net.0.proj.weight"),
    ("x_block.mlp.fc2.weight", "ff.net.2.weight"),
]


def _basic(key_map, basic, prefix):
    for native, diffusers, *function in basic:
        key_map[diffusers] = (prefix + native, None, *function) if function else prefix + native


def flux_to_diffusers(config, output_prefix=""):
    """diffusers weight -> native weight, or (native weight, (dim, start, length) | None[, function])."""
    h, key_map = config["hidden_size"], {}
    for index in range(config["depth"]):
        src, dst = f"transformer_blocks.{index}", f"{output_prefix}double_blocks.{index}"
        for i, (x, c) in enumerate((("to_q", "add_q_proj"), ("to_k", "add_k_proj"), ("to_v", "add_v_proj"))):
            key_map[f"{src}.attn.{x}.weight"] = (f"{dst}.img_attn.qkv.weight", (0, i * h, h))
            key_map[f"{src}.attn.{c}.weight"] = (f"{dst}.txt_attn.qkv.weight", (0, i * h, h))
        key_map.update({f"{src}.{d}": f"{dst}.{n}" for d, n in FLUX_DOUBLE_BLOCK.items()})
    for index in range(config["depth_single_blocks"]):
        src, dst = f"single_transformer_blocks.{index}", f"{output_prefix}single_blocks.{index}"
        for i, x in enumerate(("to_q", "to_k", "to_v")):
            key_map[f"{src}.attn.{x}.weight"] = (f"{dst}.linear1.weight", (0, i * h, h))
        key_map[f"{src}.proj_mlp.weight"] = (f"{dst}.linear1.weight", (0, 3 * h, 4 * h))
        key_map.update({f"{src}.{d}": f"{dst}.{n}" for d, n in FLUX_SINGLE_BLOCK.items()})
    _basic(key_map, FLUX_BASIC, output_prefix)
    return key_map


def mmdit_to_diffusers(config, output_prefix=""):
    """The same for SD3 (``depth`` = hidden size // 64; ``num_blocks`` defaults to it)."""
    depth, key_map = config.get("depth", 0), {}
    offset = depth * 64
    for i in range(config.get("num_blocks", depth)):
        src, dst = f"transformer_blocks.{i}", f"{output_prefix}joint_blocks.{i}"
        for j, (x, c) in enumerate((("to_q", "add_q_proj"), ("to_k", "add_k_proj"), ("to_v", "add_v_proj"))):
            key_map[f"{src}.attn.{x}.weight"] = (f"{dst}.x_block.attn.qkv.weight", (0, j * offset, offset))
            key_map[f"{src}.attn.{c}.weight"] = (f"{dst}.context_block.attn.qkv.weight", (0, j * offset, offset))
            key_map[f"{src}.attn2.{x}.weight"] = (f"{dst}.x_block.attn2.qkv.weight", (0, j * offset, offset))
        key_map.update({f"{src}.{d}": f"{dst}.{n}" for n, d in MMDIT_BLOCK})
    last = [
        (
            f"joint_blocks.{depth - 1}.context_block.adaLN_modulation.1.weight",
            f"transformer_blocks.{depth - 1}.norm1_context.linear.weight",
            SWAP,
        )
    ]
    _basic(key_map, MMDIT_BASIC + last, output_prefix)
    return key_map


# ----------------------------------------------------------------------------- copy of comfy/model_detection.py


def convert_diffusers_mmdit(shapes, sd_map):
    """Native weight shapes of a diffusers checkpoint with weight ``shapes``: renamed entries keep their shape, sliced
    ones grow their native weight to hold every slice (ComfyUI copies each diffusers weight into its slice)."""
    out = {}
    for k, target in sd_map.items():
        if k not in shapes:
            continue
        if isinstance(target, str) or target[1] is None:
            out[target if isinstance(target, str) else target[0]] = tuple(shapes[k])
            continue
        (key, (dim, start, length)), grown = target[:2], list(out.get(target[0], shapes[k]))
        assert shapes[k][dim] == length, f"{k} {tuple(shapes[k])} does not fill its slice {target}"
        grown[dim] = max(grown[dim], start + length)
        out[key] = tuple(grown)
    return out


# ----------------------------------------------------------------------------- copy of comfy/ldm/wan/model.py


def wan_native_shapes(c):
    """The parameters of ``WanModel(model_type='t2v', qk_norm=True, cross_attn_norm=True)`` for the diffusers config
    ``c`` (dim = heads x head dim), under ComfyUI's ``diffusion_model.`` prefix."""
    dim, ffn = c.num_attention_heads * c.attention_head_dim, c.ffn_dim
    linear = {
        "text_embedding.0": (dim, c.text_dim),
        "text_embedding.2": (dim, dim),
        "time_embedding.0": (dim, c.freq_dim),
        "time_embedding.2": (dim, dim),
        "time_projection.1": (6 * dim, dim),
        "head.head": (math.prod(c.patch_size) * c.out_channels, dim),
    }
    shapes = {"patch_embedding.weight": (dim, c.in_channels, *c.patch_size), "patch_embedding.bias": (dim,)}
    shapes["head.modulation"] = (1, 2, dim)
    for i in range(c.num_layers):
        for attn in ("self_attn", "cross_attn"):
            linear.update({f"blocks.{i}.{attn}.{x}": (dim, dim) for x in "qkvo"})
            shapes.update({f"blocks.{i}.{attn}.{n}.weight": (dim,) for n in ("norm_q", "norm_k")})
        shapes.update({f"blocks.{i}.norm3.weight": (dim,), f"blocks.{i}.norm3.bias": (dim,)})
        linear.update({f"blocks.{i}.ffn.0": (ffn, dim), f"blocks.{i}.ffn.2": (dim, ffn)})
        shapes[f"blocks.{i}.modulation"] = (1, 6, dim)
    for name, shape in linear.items():
        shapes.update({f"{name}.weight": shape, f"{name}.bias": shape[:1]})
    return {f"diffusion_model.{k}": v for k, v in shapes.items()}


# ----------------------------------------------------------------------------- copy of comfy/lora.py


def model_lora_keys_unet(native, kind=None, unet_config=None):
    """LoRA key -> native weight (or (weight, offset[, function])) for a model with the native weights ``native``;
    ``kind`` "sd3" / "flux" adds the entries built from diffusers names."""
    key_map = {}
    for k in native:  # every model
        if k.startswith("diffusion_model."):
            if k.endswith(".weight"):
                key_map["lora_unet_{}".format(k[len("diffusion_model.") : -len(".weight")].replace(".", "_"))] = k
                key_map[k[: -len(".weight")]] = k  # generic lora format without any weird key names
            else:
                key_map[k] = k
    if kind == "sd3":
        for k, to in mmdit_to_diffusers(unet_config, output_prefix="diffusion_model.").items():
            if k.endswith(".weight"):
                base = k[: -len(".weight")]
                key_map[f"transformer.{base}"] = to
                key_map[f"base_model.model.{base}"] = to
                key_map["lora_transformer_{}".format(base.replace(".", "_"))] = to  # OneTrainer lora
                key_map["lycoris_{}".format(base.replace(".", "_"))] = to
    if kind == "flux":
        for k, to in flux_to_diffusers(unet_config, output_prefix="diffusion_model.").items():
            if k.endswith(".weight"):
                base = k[: -len(".weight")]
                key_map[f"transformer.{base}"] = to
                key_map["lycoris_{}".format(base.replace(".", "_"))] = to
                key_map["lora_transformer_{}".format(base.replace(".", "_"))] = to  # onetrainer
                key_map[base] = to  # DiffSynth lora format
        for k in native:
            if k.endswith(".weight") and ".linear1." in k:
                key_map[k.replace(".linear1.weight", ".linear1_qkv")] = (k, (0, 0, unet_config["hidden_size"] * 3))
    return key_map


def load_lora(lora, to_load):
    """``load_lora`` with ``LoRAAdapter.load``'s kohya form: {target: (up, down, alpha)} and the file keys left
    unloaded (each one ComfyUI logs as "lora key not loaded")."""
    patches, loaded = {}, set()
    for x in to_load:
        alpha = None
        if f"{x}.alpha" in lora:
            alpha = lora[f"{x}.alpha"].item()
            loaded.add(f"{x}.alpha")
        if f"{x}.lora_up.weight" in lora:
            patches[to_load[x]] = (lora[f"{x}.lora_up.weight"], lora[f"{x}.lora_down.weight"], alpha)
            loaded |= {f"{x}.lora_up.weight", f"{x}.lora_down.weight"}
    return patches, sorted(set(lora) - loaded)


def comfyui_delta(up, down, alpha, shape):
    """``LoRAAdapter.calculate_weight``'s delta at strength 1 for a target weight (or slice) of ``shape``."""
    scale = alpha / down.shape[0] if alpha is not None else 1.0
    return scale * torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)).reshape(shape)


# ----------------------------------------------------------------------------- tiny models, as ComfyUI holds them


def tiny_flux():
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ).eval()


def tiny_sd3():
    """Head dim 64, heads = blocks: ComfyUI sizes SD3 by depth = hidden size // 64 (one head per block)."""
    torch.manual_seed(0)
    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=64,
        num_attention_heads=2,
        caption_projection_dim=128,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        out_channels=4,
        pos_embed_max_size=16,
    ).eval()


def tiny_wan():
    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    ).eval()


def with_lora(adapter, seed=0):
    """``adapter`` with a LoRA on all of its family's preset targets and random non-zero deltas."""
    targets = tuple(type(adapter).recommended_config["lora.targets"])
    attach_lora(adapter, LoraSpec(targets=targets, rank=RANK, alpha=ALPHA))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora_named_parameters(adapter):
            if ".lora_B." in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return adapter


def comfyui_table(adapter):
    """(LoRA key table, native weight shapes) of ComfyUI's model for the adapter's transformer."""
    t = adapter.transformer
    shapes = {k.replace(".base_layer.", "."): tuple(v.shape) for k, v in t.state_dict().items() if ".lora_" not in k}
    if isinstance(adapter, FluxAdapter):
        config = {
            "hidden_size": shapes["x_embedder.weight"][0],
            "depth": t.config.num_layers,
            "depth_single_blocks": t.config.num_single_layers,
        }
        native = convert_diffusers_mmdit(shapes, flux_to_diffusers(config, output_prefix="diffusion_model."))
        return model_lora_keys_unet(native, "flux", config), native
    if isinstance(adapter, SD3Adapter):
        config = {"depth": shapes["pos_embed.proj.weight"][0] // 64}
        assert config["depth"] == t.config.num_layers  # a model ComfyUI can hold
        sd_map = mmdit_to_diffusers({**config, "num_blocks": t.config.num_layers}, output_prefix="diffusion_model.")
        native = convert_diffusers_mmdit(shapes, sd_map)
        return model_lora_keys_unet(native, "sd3", config), native
    native = wan_native_shapes(t.config)
    return model_lora_keys_unet(native), native


FAMILIES = {
    # adapter, tiny transformer, preset targets that match no Linear of the model (SD3's list names norm2.linear,
    # which diffusers' SD3 blocks do not have)
    "Flux": (FluxAdapter, tiny_flux, set()),
    "SD3": (SD3Adapter, tiny_sd3, {"norm2.linear"}),
    "Wan": (WanAdapter, tiny_wan, set()),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_comfyui_loads_every_exported_key_onto_a_weight_of_its_shape_with_the_trained_delta(family, tmp_path):
    adapter_cls, build, absent = FAMILIES[family]
    adapter = with_lora(adapter_cls(build()))
    layers = {n: m for n, m in adapter.transformer.named_modules() if isinstance(m, LoraLayer)}
    targets = adapter_cls.recommended_config["lora.targets"]
    assert {t for t in targets if not any(n == t or n.endswith("." + t) for n in layers)} == absent

    lora = load_file(export_kohya_lora(adapter, tmp_path / "comfy.safetensors"))
    key_map, native = comfyui_table(adapter)
    bases = {k.removesuffix(s) for k in lora for s in SUFFIXES if k.endswith(s)}
    assert len(bases) == len(layers) and len(lora) == 3 * len(layers)
    assert bases <= set(key_map), sorted(bases - set(key_map))[:5]
    patches, not_loaded = load_lora(lora, key_map)
    assert not_loaded == [] and len(patches) == len(layers)  # none left over, one native target per module

    for name, layer in layers.items():
        target = key_map[adapter_cls.comfyui_lora_key(name)]
        weight, offset = (target, None) if isinstance(target, str) else target[:2]
        shape = list(native[weight])
        if offset is not None:
            shape[offset[0]] = offset[2]
        up, down, alpha = patches[target]
        assert alpha == ALPHA and list(up.shape[:1]) + list(down.shape[1:]) == shape, (name, weight, shape)
        torch.testing.assert_close(comfyui_delta(up, down, alpha, shape), layer.get_delta_weight(ADAPTER))


@pytest.mark.parametrize(
    "module, native",
    [
        ("blocks.0.attn1.to_q", "blocks.0.self_attn.q"),
        ("blocks.0.attn1.to_out.0", "blocks.0.self_attn.o"),
        ("blocks.7.attn2.to_k", "blocks.7.cross_attn.k"),
        ("blocks.1.attn2.add_k_proj", "blocks.1.cross_attn.k_img"),
        ("blocks.0.ffn.net.0.proj", "blocks.0.ffn.0"),
        ("blocks.0.ffn.net.2", "blocks.0.ffn.2"),
        ("condition_embedder.time_proj", "time_projection.1"),
        ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
        ("proj_out", "head.head"),
    ],
)
def test_wan_comfyui_names_are_the_original_wan_modules(module, native):
    assert WanAdapter.comfyui_lora_key(module) == f"diffusion_model.{native}"


def test_wan_names_invert_diffusers_own_reading_of_original_wan_loras():
    """Every Linear of the table, as an original-name LoRA, lands on the same diffusers module through diffusers'
    ``_convert_non_diffusers_wan_lora_to_diffusers`` (image-to-video projections included)."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers

    linears = {k: v for k, v in WAN_NATIVE_NAMES.items() if "norm" not in k and k != "patch_embedding"}
    linears.update({f"blocks.3.{k}": f"blocks.3.{v}" for k, v in WAN_NATIVE_BLOCK_NAMES.items() if "norm" not in k})
    original = {}
    for i, name in enumerate(linears.values()):
        original[f"diffusion_model.{name}.lora_down.weight"] = torch.full((1, 1), float(i))
        original[f"diffusion_model.{name}.lora_up.weight"] = torch.ones(1, 1)
    converted = _convert_non_diffusers_wan_lora_to_diffusers(original)
    assert len(converted) == 2 * len(linears)
    for i, module in enumerate(linears):
        assert converted[f"transformer.{module}.lora_A.weight"].item() == i, module


def test_an_unmappable_module_is_refused_by_name_before_a_file_is_written(tmp_path):
    transformer = tiny_wan()
    transformer.fuse_qkv_projections()  # blocks.N.attn1.to_qkv: no such Linear in the original Wan model
    adapter = attach_lora(WanAdapter(transformer), LoraSpec(targets=("attn1.to_qkv", "ffn.net.2"), rank=RANK))
    path = tmp_path / "comfy.safetensors"
    with pytest.raises(ValueError, match=r"'blocks\.0\.attn1\.to_qkv'.*fused projection"):
        export_kohya_lora(adapter, path)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_a_family_whose_comfyui_names_nobody_checked_is_refused_not_guessed():
    from scfm.models.adapters import VelocityAdapter

    with pytest.raises(ValueError, match="not known to scfm.*export --format diffusers"):
        VelocityAdapter.comfyui_lora_key("blocks.0.attn.to_q")
