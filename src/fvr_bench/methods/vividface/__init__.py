"""VividFace (Zhang et al. 2025): one-step flow-matching video face restoration on Wan2.1.

``restorer``  VividFaceRestorer (plain nn.Module: DiT + VAE + empty-prompt embedding, one step, windows),
              build_restorer (training, float32) and load_restorer (``run``: meta device, target dtype)
``training``  VividFaceTraining (Lightning, every stage; what a stage trains comes from its config)
``objectives`` the stage losses: LatentFaceLoss (1), PixelFaceLoss (2, + DISTS), VAEReconstruction ("vae",
              VAE pre-training for runs without the Wan weights, not in the paper)
``backbone``  Wan DiT + VAE loading or tiny building, latent normalisation, empty-prompt embedding cache
``masks``     face parsers (BiSeNet / MediaPipe hull) and the pixel → latent mask alignment
``bisenet``   the BiSeNet face-parsing network
``losses``    the face-focused switch loss
``windows``   1 + 4k windows and cross-fade blending for clips of any length
``latents``   the on-disk pre-extraction cache

The method card is ``methods/vividface/README.md``.
"""
