"""guided-diffusion's networks (Dhariwal and Nichol 2021, "ADM") from ComfyUI's UNet blocks.

The layout follows the released checkpoints' state dicts key for key, so they load with `strict=True`:
ComfyUI's `ResBlock` (scale-shift norm, up and down sampling inside the block) and `TimestepEmbedSequential` have
guided-diffusion's layout already; its attention differs from ComfyUI's transformer blocks, so `AttentionBlock`
and the classifier's `AttentionPool2d` are the pack's own, with the checkpoints' 1×1 convolutions for q, k and v.

- `ADMUNet`: the diffusion UNet. With a learned σ it outputs ε and the variance's interpolation; ComfyUI's
  samplers take ε alone, so `forward` returns the first `image_channels` (the reference's DDIM sampler drops the
  variance half the same way).
- `ADMClassifier`: the noise-aware classifier, the UNet's encoder half with attention pooling: (x_t, t) to logits.
"""
from __future__ import annotations

import torch
from torch import nn

import comfy.ops
from comfy.ldm.modules.attention import optimized_attention
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock, TimestepEmbedSequential
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

GROUPS = 32  # guided-diffusion's GroupNorm32


def _conv1d(operations, *args, **kwargs) -> nn.Module:
    # ComfyUI's ops have no Conv1d before 2024-06; a plain one loads the same weights
    return getattr(operations, "Conv1d", nn.Conv1d)(*args, **kwargs)


def attend(qkv: torch.Tensor, heads: int, legacy_order: bool) -> torch.Tensor:
    """Self-attention over the last axis of `qkv` (B, 3·C, T) -> (B, C, T).

    guided-diffusion splits the C·3 channels two ways: per head then q, k, v (`legacy_order`, its UNets' and
    classifier's attention blocks), or q, k, v then per head (the classifier's attention pooling).
    """
    batch, width, length = qkv.shape
    head_channels = width // (3 * heads)
    if legacy_order:
        q, k, v = qkv.reshape(batch, heads, 3 * head_channels, length).split(head_channels, dim=2)
    else:
        q, k, v = (t.reshape(batch, heads, head_channels, length) for t in qkv.chunk(3, dim=1))
    # ComfyUI's attention of the user's choice takes (B, T, heads·C)
    q, k, v = (t.permute(0, 3, 1, 2).reshape(batch, length, heads * head_channels) for t in (q, k, v))
    out = optimized_attention(q, k, v, heads)
    return out.reshape(batch, length, heads, head_channels).permute(0, 2, 3, 1).reshape(batch, -1, length)


class AttentionBlock(nn.Module):
    """Residual self-attention over positions: GroupNorm, 1×1 qkv, `heads` heads, 1×1 projection."""

    def __init__(self, channels: int, heads: int, dtype=None, device=None, operations=comfy.ops.disable_weight_init):
        super().__init__()
        self.heads = heads
        self.norm = operations.GroupNorm(GROUPS, channels, dtype=dtype, device=device)
        self.qkv = _conv1d(operations, channels, 3 * channels, 1, dtype=dtype, device=device)
        self.proj_out = _conv1d(operations, channels, channels, 1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(*x.shape[:2], -1)
        h = attend(self.qkv(self.norm(flat)), self.heads, legacy_order=True)
        return (flat + self.proj_out(h)).reshape(x.shape)


class AttentionPool2d(nn.Module):
    """The classifier's head: the mean position and every position with a learned position embedding, attended
    to by the mean's query; the mean's output projected to the logits."""

    def __init__(self, side: int, channels: int, head_channels: int, out_channels: int, dtype=None, device=None,
                 operations=comfy.ops.disable_weight_init):
        super().__init__()
        self.heads = channels // head_channels
        self.positional_embedding = nn.Parameter(torch.empty(channels, side * side + 1, dtype=dtype, device=device))
        self.qkv_proj = _conv1d(operations, channels, 3 * channels, 1, dtype=dtype, device=device)
        self.c_proj = _conv1d(operations, channels, out_channels, 1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(*x.shape[:2], -1)
        flat = torch.cat([flat.mean(dim=-1, keepdim=True), flat], dim=-1)
        flat = flat + self.positional_embedding[None].to(flat.dtype)
        return self.c_proj(attend(self.qkv_proj(flat), self.heads, legacy_order=False))[:, :, 0]


class _Encoder(nn.Module):
    """The time embedding, the input blocks and the middle block that the UNet and the classifier share."""

    def __init__(self, image_channels: int, model_channels: int, num_res_blocks: int, attention_resolutions,
                 channel_mult, num_heads: int, num_head_channels: int, dtype=None, device=None,
                 operations=comfy.ops.disable_weight_init):
        super().__init__()
        self.model_channels, self.num_heads, self.num_head_channels = model_channels, num_heads, num_head_channels
        self.block_options = dict(dtype=dtype, device=device, operations=operations)
        embed = model_channels * 4
        self.time_embed = nn.Sequential(operations.Linear(model_channels, embed, dtype=dtype, device=device), nn.SiLU(),
                                        operations.Linear(embed, embed, dtype=dtype, device=device))
        resblock = self.resblock
        channels = int(model_channels * channel_mult[0])
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(
            operations.conv_nd(2, image_channels, channels, 3, padding=1, dtype=dtype, device=device))])
        self.skip_channels, self.downsampling = [channels], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [resblock(channels, int(model_channels * mult))]
                channels = int(model_channels * mult)
                if self.downsampling in attention_resolutions:
                    layers.append(self.attention(channels))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self.skip_channels.append(channels)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(resblock(channels, channels, down=True)))
                self.skip_channels.append(channels)
                self.downsampling *= 2
        self.middle_block = TimestepEmbedSequential(resblock(channels, channels), self.attention(channels),
                                                    resblock(channels, channels))
        self.channels = channels

    def resblock(self, c_in: int, c_out: int, **options) -> ResBlock:
        """ComfyUI's ResBlock as guided-diffusion configures it: scale-shift norm, no dropout; up= or down= samples."""
        return ResBlock(c_in, self.model_channels * 4, 0.0, out_channels=c_out, use_scale_shift_norm=True,
                        **options, **self.block_options)

    def attention(self, channels: int) -> AttentionBlock:
        """guided-diffusion's attention block: heads of num_head_channels, or num_heads heads where that is -1."""
        heads = self.num_heads if self.num_head_channels == -1 else channels // self.num_head_channels
        return AttentionBlock(channels, heads, **self.block_options)

    def embedding(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))


class ADMUNet(_Encoder):
    """guided-diffusion's UNetModel (resblock_updown and scale-shift norm, as every released 128-512 px model).

    Its keyword arguments are guided-diffusion's; `attention_resolutions` are downsampling factors, as
    guided-diffusion's script computes them from pixel sizes (image_size // 32, 16, 8 -> 8, 16, 32 at 256 px).
    `device` and `operations` are ComfyUI's, and any other argument ComfyUI passes is ignored.
    """

    def __init__(self, image_channels=3, model_channels=256, num_res_blocks=2, attention_resolutions=(8, 16, 32),
                 channel_mult=(1, 1, 2, 2, 4, 4), num_heads=-1, num_head_channels=64, learn_sigma=True,
                 num_classes=None, dtype=None, device=None, operations=comfy.ops.disable_weight_init, **_):
        super().__init__(image_channels, model_channels, num_res_blocks, attention_resolutions, channel_mult,
                         num_heads, num_head_channels, dtype, device, operations)
        self.dtype = dtype or torch.float32  # ComfyUI's BaseModel reads its weights' dtype here
        self.image_channels, self.num_classes = image_channels, num_classes
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, model_channels * 4, dtype=dtype, device=device)
        channels, skips, downsampling = self.channels, list(self.skip_channels), self.downsampling
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [self.resblock(channels + skips.pop(), int(model_channels * mult))]
                channels = int(model_channels * mult)
                if downsampling in attention_resolutions:
                    layers.append(self.attention(channels))
                if level and i == num_res_blocks:
                    layers.append(self.resblock(channels, channels, up=True))
                    downsampling //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(
            operations.GroupNorm(GROUPS, channels, dtype=dtype, device=device), nn.SiLU(),
            operations.conv_nd(2, channels, image_channels * (2 if learn_sigma else 1), 3, padding=1, dtype=dtype,
                               device=device))

    def forward(self, x, timesteps, y=None, **_):
        """ε for x_t at `timesteps` (and class labels `y` for a class-conditional model)."""
        emb = self.embedding(timesteps, x.dtype)
        if self.num_classes is not None:
            if y is None:
                raise ValueError("This guided-diffusion model is class-conditional: it needs class labels.")
            emb = emb + self.label_emb(y)
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)[:, :self.image_channels]


class ADMClassifier(_Encoder):
    """guided-diffusion's noise-aware classifier (EncoderUNetModel with pool "attention"): (x_t, t) to logits.

    `image_size` fixes the attention pool's position embedding, so the classifier takes that size only.
    """

    def __init__(self, image_size=256, image_channels=3, model_channels=128, num_res_blocks=2,
                 attention_resolutions=(8, 16, 32), channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64,
                 num_classes=1000, dtype=None, device=None, operations=comfy.ops.disable_weight_init):
        super().__init__(image_channels, model_channels, num_res_blocks, attention_resolutions, channel_mult, -1,
                         num_head_channels, dtype, device, operations)
        self.image_size, self.image_channels = image_size, image_channels
        self.out = nn.Sequential(
            operations.GroupNorm(GROUPS, self.channels, dtype=dtype, device=device), nn.SiLU(),
            AttentionPool2d(image_size // self.downsampling, self.channels, num_head_channels, num_classes,
                            dtype=dtype, device=device, operations=operations))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(timesteps, x.dtype)
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
        return self.out(self.middle_block(h, emb))
