"""The GPU fast path: options a CUDA deployment turns on by configuration (engine/settings.py's FastPathOptions), each
off by default, applied to every pipeline the engine loads (`FastPath.apply`).

- channels-last: the UNet's and the VAE's weights in NHWC, the layout tensor cores' convolutions take.
- fused QKV: each attention layer of the UNet computes q, k and v (k and v in cross-attention) in one matmul.
  PEFT's LoRA layers wrap to_q, to_k and to_v, which the fused projection bypasses, so a layer whose projections
  carry an active LoRA adapter runs unfused for as long as the adapter is active (checked at each call): LoRAs
  work as without fusion. The fused copy of the projections costs their size again in memory.
- compile: torch.compile of the UNet (in place: the module stays the pipeline's, LoRAs still load). Inductor's
  artifacts are read at start from the models directory's compile cache (engine/store/compile_cache.py), so a
  cold start with a baked cache traces the UNet again but does not recompile its kernels.
- cuDNN benchmark and the attention kernel (scaled-dot-product attention is diffusers' default processor with any
  torch >= 2, on every device; WORKER_ATTENTION picks which of torch's kernels it may use): process-wide, on CUDA
  only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

from ..settings import FastPathOptions
from . import compile_cache

log = logging.getLogger(__name__)
# WORKER_ATTENTION: the SDPA kernel allowed beside math (math stays: the kernels refuse some inputs, e.g. float32)
_KERNEL_SWITCHES = {"flash": torch.backends.cuda.enable_flash_sdp,
                    "efficient": torch.backends.cuda.enable_mem_efficient_sdp,
                    "cudnn": torch.backends.cuda.enable_cudnn_sdp}
WARMUP_SIZE = (64, 64)  # the warm-up generation's size when nothing is compiled


class FastPath:
    """The options, applied: process-wide ones (and the compile cache's artifacts, when compiling) once, here."""

    def __init__(self, options: FastPathOptions, models_dir: Path, device: torch.device,
                 compile_backend: str = "inductor"):
        self.options, self.models_dir, self.device, self.compile_backend = options, models_dir, device, compile_backend
        if device.type == "cuda":
            if options.cudnn_benchmark:
                torch.backends.cudnn.benchmark = True
            if options.attention != "default":
                for kernel, switch in _KERNEL_SWITCHES.items():
                    switch(kernel == options.attention)
                torch.backends.cuda.enable_math_sdp(True)
        if options.compile and compile_backend == "inductor":
            log.info(compile_cache.load(models_dir, device))

    def apply(self, pipe):
        """`pipe` with the options applied to its UNet and VAE (in place), returned."""
        options = self.options
        if options.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        if options.fuse_qkv:
            pipe.unet.fuse_qkv_projections()
            pipe.unet.set_attn_processor(FusedUnlessAdapted())
        if options.compile:
            pipe.unet.compile(backend=self.compile_backend)
        return pipe

    def warmup_sizes(self, unet, scale_factor: int) -> tuple[tuple[int, int], ...]:
        """The sizes the worker's warm-up generates at: those compiled (WORKER_COMPILE_SIZES, else the checkpoint's
        own: its UNet's sample size), so that no request waits for a compilation of them; else one tiny image."""
        if not self.options.compile:
            return (WARMUP_SIZE,)
        native = unet.config.sample_size * scale_factor
        return self.options.compile_sizes or ((native, native),)


class FusedUnlessAdapted(FusedAttnProcessor2_0):
    """diffusers' fused-projection attention, except in a layer whose q, k or v projection has an active LoRA
    adapter: that layer runs the plain processor, through the adapted projections."""

    def __init__(self):
        super().__init__()
        self.plain = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        processor = self.plain if adapted(attn) else super().__call__
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def adapted(attn) -> bool:
    """Whether a LoRA adapter is active on the attention layer's q, k or v projection (PEFT's LoRA layers have
    lora_A, the adapters by name; `disable_adapters` while diffusers' disable_lora holds)."""
    for layer in (attn.to_q, attn.to_k, attn.to_v):
        lora = getattr(layer, "lora_A", None)
        if lora is not None and not layer.disable_adapters and any(name in lora for name in layer.active_adapters):
            return True
    return False
