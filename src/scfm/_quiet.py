"""Quiet the import-time logs of the optional quantization libraries (the ``quantization`` extra).

peft and diffusers import torchao and bitsandbytes whenever they are installed. On a machine without
CUDA, torchao logs a warning per CUDA extension it cannot load, bitsandbytes one for a missing optional
CPU kernel package, torch logs deprecations of torchao's enums, and diffusers warns that torchao tensor
classes it would allow in pickled checkpoints moved (scfm loads no pickle). None of them concerns what
scfm runs; real errors (level ERROR) still show.
"""

import logging

for _name in ("torchao", "bitsandbytes", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).setLevel(logging.ERROR)
