"""Face analysis as a shared service: detection, landmarks, alignment and identity
embeddings, computed once per frame.

Used by the face metrics (:mod:`fvr_bench.metrics.face`), the methods, curation and
anything else that needs to know where a face is or whose it is. This package sits below
``fvr_bench.metrics``: nothing here imports it. One job per module:

* :mod:`~fvr_bench.faces.frames` — 8-bit RGB :class:`~fvr_bench.faces.frames.Frame` with
  its content digest, converted from ``(N, 3, H, W)`` float tensors as
  :func:`fvr_bench.video.as_uint8` rounds.
* :mod:`~fvr_bench.faces.memo` — the process-wide per-frame memo ``MEMO``.
* :mod:`~fvr_bench.faces.align` — :class:`~fvr_bench.faces.align.Geometry` (box, points)
  and the ArcFace 5-point similarity alignment onto 112².
* :mod:`~fvr_bench.faces.dlib`, :mod:`~fvr_bench.faces.mediapipe`,
  :mod:`~fvr_bench.faces.mtcnn` — the detectors / landmarkers (``shared_*`` give the
  process-wide instance of one setting; :mod:`~fvr_bench.faces.shared` is their base).
* :mod:`~fvr_bench.faces.arcface` — the ArcFace networks (IR-SE50, ResNet-18 FOS);
  :mod:`~fvr_bench.faces.embedders` — the embedders that align, batch and memoise them.
* :mod:`~fvr_bench.faces.identity`, :mod:`~fvr_bench.faces.landmarks` — per-frame
  identity embeddings / landmarks of a video or a (restored, GT) pair, following the
  no-face policy of :mod:`~fvr_bench.faces.analysis`.
* :mod:`~fvr_bench.faces.provenance` — weight-file and library versions for provenance.

Networks run on the input frames' device; dlib and MediaPipe run on the CPU.
"""
