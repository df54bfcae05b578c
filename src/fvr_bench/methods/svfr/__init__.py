"""SVFR (Wang et al., "SVFR: A Unified Framework for Generalized Video Face Restoration", CVPR
2025): Stable Video Diffusion fine-tuned for blind face restoration, colorization and
inpainting, with identity tokens and self-referred refinement.

``restorer``    SVFRRestorer (inference, what ``run`` builds) and load_restorer / build_restorer
``sampling``    the denoising loop: circular windows, rotating shift, triangular blend, CFG
``tasks``       task strings → SVFR's multi-hot and the input preparation per task
``identity``    ArcFace (iresnet100) layer4 map → 49 ID tokens; the ID crop
``official``    the official release's files (unet.pth, id_linear.pth, insightface_glint360k.pth)
``training``    SVFRTraining (diffusion loss + ULR + landmark prior); ``heads``, ``objectives``

Method card: ``methods/svfr/README.md``; configs: ``conf/method/svfr.yaml`` (paper scale) and
``conf/method/svfr_tiny.yaml`` (tests).
"""
