"""BFVR-STC (Wang et al., "Efficient Video Face Enhancement with Enhanced Spatial-Temporal
Consistency", CVPR 2025): 3D VQGAN with spatial and temporal codebooks, lookup transformers.

``restorer``    BFVRSTCRestorer (inference, what ``run`` builds) and load_restorer / build_restorer
``training``    BFVRSTCTraining (the LightningModule of every stage)
``objectives``  the per-stage loss objects (CodebookLearning: stage 1; CodeLookup: stage II)

Method card: ``methods/bfvr_stc/README.md``; configs: ``conf/method/bfvr_stc.yaml`` (paper
scale) and ``conf/method/bfvr_stc_tiny.yaml`` (tests).
"""

from fvr_bench.methods.bfvr_stc.restorer import BFVRSTCRestorer, build_restorer, load_restorer

__all__ = ["BFVRSTCRestorer", "build_restorer", "load_restorer"]
