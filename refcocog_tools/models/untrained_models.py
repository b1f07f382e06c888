"""The embedded untrained models: tiny CLIPs and tiny YOLOv8s models, the same on any CPU.

Pretrained weights cannot be fetched here, so every code path runs on small, *untrained*,
deterministic models of the real architectures: ``"tiny-rn"`` and ``"tiny-vit"`` (instances of
``clip.model.CLIP``), ``"tiny-yolov8s"`` (Ultralytics' ``yolov8s.yaml``) and
``"tiny-yolov8s-seg"`` (``yolov8s-seg.yaml``, a box and a mask per detection). Each is generated
once into ``<cache>`` and then loaded by ``backbones`` through the same route as a user's file,
with a sidecar ``<file>.json`` marking it untrained: numbers computed with them say nothing
about CLIP or YOLO.

Generation is bit-identical on any machine: every random draw comes from numpy's PCG64
(:class:`_PortableRandom`), and the tiny ResNet's BatchNorm statistics are calibrated in float64.
"""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from refcocog_tools.core.files import atomic_torch_save, atomic_write_json
from refcocog_tools.models.openai_clip import clip

# Arguments of clip.model.CLIP. build_model() re-derives all of them from tensor shapes, so they
# must be chosen such that the derivation is exact:
#  * ResNet: image_resolution = 32 * sqrt(attnpool positions - 1) -> a multiple of 32;
#    vision heads = width * 32 // 64 (computed by CLIP itself, never stored).
#  * ViT: image_resolution = patch * grid; vision heads = width // 64 -> width >= 64.
#  * Text: heads = width // 64 -> width >= 64; context 77 and vocab 49408 are what
#    clip.tokenize produces. The 49408 x 64 token embedding is most of each file.
# The two differ in resolution and embed_dim on purpose: an ensemble must handle per-backbone
# preprocessing and must never mix embeddings of different backbones.
TINY_CLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-rn": dict(
        embed_dim=64,
        image_resolution=64,
        vision_layers=(1, 1, 1, 1),
        vision_width=16,
        vision_patch_size=None,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=2,
    ),
    "tiny-vit": dict(
        embed_dim=32,
        image_resolution=96,
        vision_layers=2,
        vision_width=64,
        vision_patch_size=16,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=2,
    ),
}
TINY_SEEDS = {"tiny-rn": 0, "tiny-vit": 1}
EMBEDDED_CLIPS = tuple(TINY_CLIP_CONFIGS)  # the untrained CLIPs, generated on first use
EMBEDDED_YOLO = "tiny-yolov8s"
EMBEDDED_YOLO_SEG = "tiny-yolov8s-seg"
# The embedded YOLOs: each one Ultralytics architecture at its own scale ("s"), and its task.
TINY_YOLO_CONFIGS: dict[str, tuple[str, str]] = {
    EMBEDDED_YOLO: ("yolov8s.yaml", "detect"),
    EMBEDDED_YOLO_SEG: ("yolov8s-seg.yaml", "segment"),
}
EMBEDDED_YOLOS = tuple(TINY_YOLO_CONFIGS)
TINY_YOLO_SEED = 0
# Where our metadata sits inside the tiny YOLO checkpoint dict.
UNTRAINED_KEY = "refcocog_tools"


class _PortableRandom(TorchDispatchMode):
    """Every random draw of PyTorch, taken instead from numpy's PCG64 in float64.

    PyTorch's CPU generator gives different float32 values on different CPUs: ``normal_`` uses
    vectorised transcendental functions whose last bits depend on the kernels the CPU selects
    (``ATEN_CPU_CAPABILITY``). numpy's ``Generator(PCG64(seed))`` is specified bit for bit, and
    a float64 value rounds to the same float32 everywhere, so a model initialised inside this
    mode has the same weights on any machine. The distributions are the ones PyTorch was asked
    for (``normal_(mean, std)``, ``uniform_(a, b)``, ``randn``), so the model is initialised as
    its own code says; any other random op is refused rather than silently left CPU-dependent.
    Being a dispatch mode, it also sees the draws made inside ``nn.init`` helpers.
    """

    _REFUSED = frozenset({"rand", "randint", "randperm", "random_", "bernoulli", "bernoulli_",
                          "exponential_", "geometric_", "log_normal_", "cauchy_", "multinomial",
                          "normal", "rand_like", "randn_like", "randint_like", "poisson",
                          "native_dropout", "rrelu_with_noise"})

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name == "normal_":
            tensor, mean, std = _with_defaults(args, kwargs, ("self", 0.0), ("mean", 0.0),
                                                ("std", 1.0))
            return tensor.copy_(self._draw(self.rng.normal(mean, std, tuple(tensor.shape))))
        if name == "uniform_":
            tensor, low, high = _with_defaults(args, kwargs, ("self", 0.0), ("from", 0.0),
                                                ("to", 1.0))
            return tensor.copy_(self._draw(self.rng.uniform(low, high, tuple(tensor.shape))))
        if name == "randn":
            values = self._draw(self.rng.standard_normal(tuple(args[0])))
            return values.to(dtype=kwargs.get("dtype") or torch.get_default_dtype())
        if name in self._REFUSED:
            raise RuntimeError(f"random op {name} has no CPU-independent replacement")
        return func(*args, **kwargs)

    @staticmethod
    def _draw(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))


def _with_defaults(args: tuple, kwargs: dict, *names_defaults: tuple[str, float]) -> list:
    """Positional-or-keyword arguments of an aten op, in schema order, with defaults."""
    return [args[i] if i < len(args) else kwargs.get(name, default)
            for i, (name, default) in enumerate(names_defaults)]


def _tiny_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Build the untrained tiny model from a fixed seed, bit-identical on any CPU.

    Every random draw comes from numpy (``_PortableRandom``) and the BatchNorm calibration runs
    in float64; neither touches PyTorch's global RNG.
    """
    with _PortableRandom(TINY_SEEDS[name]):
        model = clip.model.CLIP(**TINY_CLIP_CONFIGS[name])
    _calibrate_batchnorm(model, TINY_SEEDS[name])
    # Stored in fp16 like OpenAI's files: build_model() converts to fp16 on load anyway, so
    # nothing is lost and the file is half the size. contiguous() + clone() give every tensor
    # its own storage, so the serialised bytes depend only on the values.
    return {
        key: (value.half() if value.is_floating_point() else value).contiguous().clone()
        for key, value in model.state_dict().items()
    }


@torch.no_grad()
def _calibrate_batchnorm(model: clip.model.CLIP, seed: int) -> None:
    """Set BatchNorm running statistics from one pass over seeded smooth noise images.

    With the default statistics (mean 0, variance 1) every image of an untrained ModifiedResNet
    embeds to nearly the same direction (pairwise cosine > 0.999), which makes every score a
    tie. One forward pass in training mode, with no gradient step and no data, standardises the
    channels; the weights stay untrained. ViT models have no BatchNorm and are left as they are.
    The pass runs in float64 on numpy noise: the float32 statistics it rounds to do not depend
    on the CPU's kernels or thread count, the way a float32 pass's last bits do.
    """
    norms = [m for m in model.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not norms:
        return
    size = model.visual.input_resolution
    rng = np.random.Generator(np.random.PCG64(seed))
    noise = torch.from_numpy(rng.standard_normal((64, 3, 8, 8)))
    noise = torch.nn.functional.interpolate(noise, size=size, mode="bilinear") * 1.5
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: exactly this batch's statistics
    model.visual.double().train()
    model.visual(noise)
    model.visual.float().eval()
    for norm in norms:
        norm.momentum = 0.1


# Version of the generation recipe, written into each generated file's sidecar. A cache file
# made by an older recipe (version 1: PyTorch's own RNG, whose draws differ between CPUs) is
# generated again instead of being used, so no cache mixes weights of two recipes.
TINY_GENERATOR = 2


def _generated_current(path: Path) -> bool:
    """Whether ``path`` exists and its sidecar says the current recipe made it."""
    sidecar = Path(str(path) + ".json")
    if not (path.is_file() and sidecar.is_file()):
        return False
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("generator") == TINY_GENERATOR


def tiny_clip_checkpoint(name: str, cache: Path) -> Path:
    """Path of the embedded model's file, generating it (deterministically) on first use."""
    path = cache / "clip" / f"{name}.pt"
    if not _generated_current(path):
        # The weights first, the sidecar last: an interrupted run is generated again.
        atomic_torch_save(path, _tiny_state_dict(name))
        atomic_write_json(Path(str(path) + ".json"), {
            "untrained": True,
            "generator": TINY_GENERATOR,
            "description": f"embedded {name}: random weights of clip.model.CLIP, "
                           f"seed {TINY_SEEDS[name]} (numpy PCG64); for offline smoke runs only",
            "config": TINY_CLIP_CONFIGS[name],
        })
    return path



def tiny_yolo_checkpoint(cache: Path, name: str = EMBEDDED_YOLO) -> Path:
    """Untrained ``yolov8s.yaml`` detector (``tiny-yolov8s``) or ``yolov8s-seg.yaml``
    segmentation model (``tiny-yolov8s-seg``) with COCO class names, generated once.

    Written by hand rather than with ``YOLO.save`` because that stamps the current date into the
    file; this dict has the layout ``ultralytics.nn.tasks.load_checkpoint`` reads. The caller
    sets Ultralytics' environment first (``backbones`` does: offline, quiet, safe loading), as
    it must be before the first ``import ultralytics``.
    """
    if name not in TINY_YOLO_CONFIGS:
        raise ValueError(f"{name!r} is not an embedded YOLO ({', '.join(EMBEDDED_YOLOS)})")
    cfg, task = TINY_YOLO_CONFIGS[name]
    path = cache / "yolo" / f"{name}.pt"
    if _generated_current(path):
        return path
    import ultralytics
    import yaml
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel
    from ultralytics.utils import ROOT

    coco = yaml.safe_load((ROOT / "cfg" / "datasets" / "coco.yaml").read_text(encoding="utf-8"))
    architecture = SegmentationModel if task == "segment" else DetectionModel
    # Drawn from numpy like the tiny CLIP models: PyTorch's own draws differ between CPUs.
    with _PortableRandom(TINY_YOLO_SEED):
        model = architecture(cfg, nc=len(coco["names"]), verbose=False)
    model.names = {int(k): str(v) for k, v in coco["names"].items()}
    ckpt = {
        "model": deepcopy(model).half().eval(),
        "ema": None,
        # Where Ultralytics reads a checkpoint's task (absent, it assumes "detect").
        "train_args": {} if task == "detect" else {"task": task},
        "version": ultralytics.__version__,
        UNTRAINED_KEY: {"untrained": True, "seed": TINY_YOLO_SEED, "cfg": cfg},
    }
    atomic_torch_save(path, ckpt)
    atomic_write_json(Path(str(path) + ".json"), {
        "untrained": True,
        "generator": TINY_GENERATOR,
        "description": f"embedded {name}: random weights of {cfg}, seed "
                       f"{TINY_YOLO_SEED} (numpy PCG64); for offline smoke runs only",
    })
    return path
