"""diffusers pipeline plumbing: sampling a pipeline on scfm's grid, loading LoRA files into it."""
