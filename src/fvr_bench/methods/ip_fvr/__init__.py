"""IP-FVR: reference-guided identity preservation on a VEnhancer-style video diffusion backbone."""
