"""BFVR-STC (Wang et al., "Efficient Video Face Enhancement with Enhanced Spatial-Temporal
Consistency", CVPR 2025): 3D VQGAN with spatial and temporal codebooks, lookup transformers.

Method card: ``methods/bfvr_stc/README.md``; configs: ``conf/method/bfvr_stc.yaml`` (paper
scale) and ``conf/method/bfvr_stc_tiny.yaml`` (tests).
"""

from fvr_bench.methods.bfvr_stc.module import BFVRSTCModule, load_restorer

__all__ = ["BFVRSTCModule", "load_restorer"]
