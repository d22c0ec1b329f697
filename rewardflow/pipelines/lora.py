"""LoRA and the reference policy of a :class:`~rewardflow.pipelines.base.Generator`.

Attach a peft LoRA adapter to the denoiser (:meth:`LoraMixin.add_lora`), write it in the file layout plain diffusers
reads (:meth:`~LoraMixin.save_lora`, read back by ``pipe.load_lora_weights``), load one in the diffusers or a
community layout such as kohya-ss / A1111, converted by diffusers (:meth:`~LoraMixin.load_lora`),
and run the frozen reference policy (adapters disabled, or a snapshot for full fine-tuning) inside
:meth:`~LoraMixin.reference`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from rewardflow.io.paths import respect_umask

# the file name diffusers' ``save_lora_weights`` writes and ``load_lora_weights`` looks for
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def upcast_trainable(module: torch.nn.Module) -> None:
    """Trainable parameters in float32 over frozen fp16 / bf16 weights (diffusers' ``cast_training_params``): the
    optimizer state follows them, and peft's LoRA layers cast their input to the LoRA weights' dtype."""
    for p in module.parameters():
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()


class LoraMixin:
    """LoRA adapters, the reference policy and the other training helpers on ``self.denoiser``.

    Adapters set ``pipeline_class`` (the diffusers pipeline class or its name, whose ``save_lora_weights`` writes
    the LoRA file), ``lora_component`` ("unet" or "transformer") and ``default_lora_targets``.
    """

    denoiser: torch.nn.Module
    default_lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    # set by each adapter: the diffusers pipeline class (its ``save_lora_weights`` writes the LoRA file) and the
    # name of the denoiser component in that pipeline ("unet" or "transformer")
    pipeline_class: Any = None
    lora_component: str = "unet"

    def add_lora(self, rank: int = 4, alpha: float | None = None, target_modules: Sequence[str] | None = None,
                 init: str | bool = "gaussian") -> None:
        """Attach a peft LoRA adapter to the denoiser; only its weights are trainable afterwards."""
        from peft import LoraConfig  # lazy: peft is a heavy import, needed only when a LoRA is attached

        targets = list(target_modules or self.default_lora_targets)
        self.denoiser.requires_grad_(False)
        self.denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights=init,
                                             target_modules=targets))
        upcast_trainable(self.denoiser)

    def save_lora(self, save_directory: str | os.PathLike, adapter_name: str = "default",
                  state_dict: dict[str, torch.Tensor] | None = None) -> str:
        """Write the denoiser's LoRA so plain diffusers reads it: ``pipe.load_lora_weights(save_directory)``.

        As the diffusers training scripts do (``examples/text_to_image/train_text_to_image_lora.py`` for UNets,
        ``examples/dreambooth/train_dreambooth_lora_sd3.py`` for transformers): the peft state dict
        (``get_peft_model_state_dict``), converted to the diffusers key layout for UNets
        (``convert_state_dict_to_diffusers``), written by the pipeline class's ``save_lora_weights`` together
        with the LoRA config (rank, alpha, targets) as adapter metadata. Returns the path of the written file.
        ``state_dict``: the denoiser's (trainable) weights to write instead of its own, e.g. gathered from shards.
        """
        from peft.utils import get_peft_model_state_dict  # lazy: heavy import, needed only to save a LoRA

        if not self.has_lora() or adapter_name not in getattr(self.denoiser, "peft_config", {}):
            raise ValueError(f"save_lora: the denoiser has no LoRA adapter {adapter_name!r} "
                             "(attach one with gen.add_lora(...) or gen.load_lora(DIR))")
        if self.lora_component not in ("unet", "transformer"):
            raise ValueError(f"lora_component must be 'unet' or 'transformer', got {self.lora_component!r}")
        writer = self._lora_writer()
        state = get_peft_model_state_dict(self.denoiser, state_dict=state_dict, adapter_name=adapter_name)
        state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        if self.lora_component == "unet":
            from diffusers.utils import convert_state_dict_to_diffusers  # lazy: diffusers is a heavy import

            state = convert_state_dict_to_diffusers(state)
        meta = self.denoiser.peft_config[adapter_name].to_dict()
        os.makedirs(save_directory, exist_ok=True)
        writer.save_lora_weights(str(save_directory), **{f"{self.lora_component}_lora_layers": state,
                                                       f"{self.lora_component}_lora_adapter_metadata": meta})
        out = os.path.join(str(save_directory), LORA_WEIGHT_NAME)
        respect_umask(out)  # safetensors writes 0600 whatever the umask
        return out

    def _lora_writer(self):
        cls = self.pipeline_class
        if isinstance(cls, str):
            import diffusers  # lazy: heavy import, needed only to resolve a class name

            cls = getattr(diffusers, cls)
        if cls is not None and hasattr(cls, "save_lora_weights"):
            return cls
        if self.lora_component == "unet":
            # a UNet pipeline without LoRA support of its own (the toy one): the SD 1.x file layout
            from diffusers.loaders import StableDiffusionLoraLoaderMixin  # lazy: diffusers is a heavy import

            return StableDiffusionLoraLoaderMixin
        raise ValueError(f"{type(self).__name__}.pipeline_class ({cls!r}) has no save_lora_weights; set "
                         "pipeline_class to the diffusers pipeline class of this model family")

    def load_lora(self, lora_dir: str | os.PathLike, adapter_name: str = "default", trainable: bool = True,
                  weight_name: str | None = None) -> None:
        """Load a LoRA into the denoiser: a directory holding ``pytorch_lora_weights.safetensors`` (:meth:`save_lora`,
        diffusers' ``save_lora_weights``) or a ``.safetensors`` file, in the diffusers key layout or a community one
        (kohya-ss / A1111 ``lora_unet_...`` with ``.alpha`` keys, and the other layouts diffusers converts).

        As ``pipe.load_lora_weights`` does: the pipeline class's ``lora_state_dict`` reads the file and converts
        non-diffusers layouts (diffusers' ``lora_conversion_utils``), then ``load_lora_adapter`` attaches it (prefix
        filtering, rank and alpha from the stored metadata or the ``.alpha`` keys). Weights for other components
        (a text encoder's) are ignored with a warning. The base weights are frozen; ``trainable``: the LoRA weights
        require grad (as after :meth:`add_lora`), else they are frozen too."""
        path = str(lora_dir)
        if os.path.isdir(path):
            f = os.path.join(path, weight_name or LORA_WEIGHT_NAME)
            if not os.path.isfile(f):
                raise FileNotFoundError(f"LoRA file not found: {f} (write one with gen.save_lora(DIR) or "
                                        "pipe.save_lora_weights(DIR, ...), or give the .safetensors file itself)")
        elif not os.path.isfile(path):
            raise FileNotFoundError(f"LoRA directory or file not found: {path}")
        else:
            path, weight_name = os.path.dirname(path) or ".", os.path.basename(path)
        if adapter_name in getattr(self.denoiser, "peft_config", {}):
            raise ValueError(f"the denoiser already has a LoRA adapter named {adapter_name!r}; pass another "
                             "adapter_name")
        weight_name = weight_name or LORA_WEIGHT_NAME
        file = os.path.join(path, weight_name)
        if not weight_name.endswith(".safetensors"):
            raise ValueError(f"{file}: LoRA files are read as .safetensors only (no pickle); convert it first")
        try:
            state, alphas, metadata = self._read_lora_file(path, weight_name)
        except SafetensorError as e:  # garbage, truncated or not a safetensors file
            raise ValueError(f"{file} is not a readable safetensors LoRA file ({e}); save one with gen.save_lora(DIR) "
                             "or pipe.save_lora_weights(DIR, ...)") from None
        prefixes = {k.split(".", 1)[0] for k in state}
        if self.lora_component not in prefixes:
            raise ValueError(f"{file} holds no LoRA weights for the {self.lora_component!r} component (key "
                             f"prefixes after conversion: {sorted(prefixes)}): a LoRA for another part or model "
                             "family, or a layout diffusers does not convert")
        if prefixes - {self.lora_component}:
            warnings.warn(f"{file}: only the {self.lora_component} LoRA is loaded; the weights for "
                          f"{sorted(prefixes - {self.lora_component})} are ignored", stacklevel=2)
        try:
            self.denoiser.load_lora_adapter(state, network_alphas=alphas, prefix=self.lora_component,
                                            adapter_name=adapter_name, metadata=metadata)
        except RuntimeError as e:  # tensors shaped for another model
            raise ValueError(f"cannot load the LoRA {file} into this {type(self.denoiser).__name__}: {e}") from None
        self.denoiser.requires_grad_(False)
        if trainable:
            for n, p in self.denoiser.named_parameters():
                if "lora_" in n and f".{adapter_name}." in f"{n}.":
                    p.requires_grad_(True)
            upcast_trainable(self.denoiser)

    # ------------------------------------------------------------------ full fine-tuning
    def save_denoiser(self, save_directory: str | os.PathLike,
                      state_dict: dict[str, torch.Tensor] | None = None) -> str:
        """Full fine-tuning: write the denoiser with diffusers' ``save_pretrained`` into
        ``save_directory/<component>/`` (``unet`` or ``transformer``: ``config.json`` +
        ``diffusion_pytorch_model.safetensors``), the folder a pipeline's ``from_pretrained`` takes as that
        component::

            unet = UNet2DConditionModel.from_pretrained("run/final/unet")
            pipe = StableDiffusionPipeline.from_pretrained(BASE, unet=unet)

        Returns the folder written. A denoiser with LoRA adapters is saved with :meth:`save_lora` instead.
        ``state_dict``: the denoiser's parameters to write instead of its own (e.g. gathered from shards; its
        persistent buffers are added), in the same layout (``config.json`` +
        ``diffusion_pytorch_model.safetensors``)."""
        if self.has_lora():
            raise ValueError("save_denoiser writes a fully fine-tuned denoiser; this one has LoRA adapters: use "
                             "gen.save_lora(DIR)")
        if not hasattr(self.denoiser, "save_pretrained"):
            raise ValueError(f"{type(self.denoiser).__name__} has no save_pretrained (not a diffusers model)")
        folder = os.path.join(str(save_directory), self.lora_component)
        if state_dict is None:
            self.denoiser.save_pretrained(folder, safe_serialization=True)
            return folder
        missing = sorted({n for n, _ in self.denoiser.named_parameters()} - set(state_dict))
        if missing:
            raise ValueError(f"save_denoiser: state_dict lacks {len(missing)} of the denoiser's parameters "
                             f"(e.g. {missing[0]})")
        buffers = {f"{m}.{b}" if m else b: t for m, mod in self.denoiser.named_modules()
                   for b, t in mod.named_buffers(recurse=False)
                   if t is not None and b not in mod._non_persistent_buffers_set}
        os.makedirs(folder, exist_ok=True)
        self.denoiser.save_config(folder)
        tensors = {k: v.detach().cpu().contiguous() for k, v in {**buffers, **state_dict}.items()}
        save_file(tensors, os.path.join(folder, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        respect_umask(folder)  # safetensors writes 0600 whatever the umask
        return folder

    def load_weights(self, path: str | os.PathLike, trainable: bool = False) -> str:
        """Load trained weights into this generator, whatever form they were saved in; returns ``"lora"`` or
        ``"full"``.

        * a LoRA: a folder holding ``pytorch_lora_weights.safetensors`` (:meth:`save_lora`, diffusers'
          ``save_lora_weights``, a training checkpoint) or a LoRA ``.safetensors`` file -> :meth:`load_lora`;
        * a full fine-tune: a denoiser folder written by ``save_pretrained`` (``config.json`` + weights), or a
          folder holding one as ``unet/`` / ``transformer/`` (:meth:`save_denoiser`) -> its weights replace the
          denoiser's (same architecture required; dtype and device stay this generator's).
        """
        path = str(path)
        if os.path.isfile(path) or os.path.isfile(os.path.join(path, LORA_WEIGHT_NAME)):
            self.load_lora(path, trainable=trainable)
            return "lora"
        if not os.path.isdir(path):
            raise FileNotFoundError(f"LoRA directory or file not found: {path} (expected a LoRA folder with "
                                    f"{LORA_WEIGHT_NAME}, a LoRA .safetensors file, or a fine-tuned denoiser folder)")
        folder = next((d for d in (path, os.path.join(path, self.lora_component))
                       if os.path.isfile(os.path.join(d, "config.json"))), None)
        if folder is None:
            raise FileNotFoundError(f"{path} holds neither a LoRA ({LORA_WEIGHT_NAME}) nor a fine-tuned denoiser "
                                    f"(config.json in {path} or in {os.path.join(path, self.lora_component)})")
        self._load_denoiser_folder(folder)
        self.denoiser.requires_grad_(bool(trainable))
        return "full"

    def _load_denoiser_folder(self, folder: str) -> None:
        cls = type(self.denoiser)
        if not hasattr(cls, "from_pretrained"):
            raise ValueError(f"{cls.__name__} cannot load a save_pretrained folder (not a diffusers model)")
        with open(os.path.join(folder, "config.json")) as fh:
            saved = json.load(fh).get("_class_name")
        if saved is not None and saved != cls.__name__:
            raise ValueError(f"the {self.lora_component} in {folder} does not fit this model "
                             f"({type(self).__name__}): it is a {saved}, this model's is a {cls.__name__}")
        try:
            trained = cls.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"cannot load the fine-tuned {self.lora_component} in {folder}: {e}") from e
        try:
            self.denoiser.load_state_dict(trained.state_dict(), strict=True)
        except RuntimeError as e:  # missing / unexpected keys, size mismatches: another architecture
            raise ValueError(f"the {self.lora_component} in {folder} does not fit this model "
                             f"({type(self).__name__}): {str(e).splitlines()[0]}") from None

    def _read_lora_file(self, folder: str, weight_name: str) -> tuple[dict, dict | None, dict | None]:
        """``(state dict in the diffusers layout, network alphas or None, adapter metadata or None)`` through the
        pipeline class's ``lora_state_dict`` (the conversion of kohya / A1111 and other layouts happens there)."""
        writer = self._lora_writer()
        kw: dict[str, Any] = {"weight_name": weight_name, "return_lora_metadata": True, "use_safetensors": True}
        if "return_alphas" in inspect.signature(writer.lora_state_dict).parameters:
            kw["return_alphas"] = True  # FLUX-style readers return alphas only when asked
        if self.lora_component == "unet" and hasattr(self.denoiser, "config"):
            kw["unet_config"] = self.denoiser.config  # SDXL: maps SGM block names of A1111 files to diffusers'
        out = writer.lora_state_dict(folder, **kw)
        if isinstance(out, dict):
            return out, None, None
        if len(out) == 3:
            return out[0], out[1], out[2]
        return out[0], None, out[1]  # (state dict, metadata): readers without network alphas

    def has_lora(self) -> bool:
        return bool(getattr(self.denoiser, "_hf_peft_config_loaded", False))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def snapshot_reference(self) -> None:
        """For full fine-tuning: keep a frozen copy of the current denoiser as the reference policy."""
        self._reference = copy.deepcopy(self.denoiser).requires_grad_(False).eval()

    @contextlib.contextmanager
    def reference(self):
        """Run the reference policy inside the block: LoRA adapters disabled, or the snapshot from
        :meth:`snapshot_reference` swapped in."""
        if self.has_lora():
            self.denoiser.disable_adapters()
            try:
                yield self
            finally:
                self.denoiser.enable_adapters()
        elif getattr(self, "_reference", None) is not None:
            policy, self.denoiser = self.denoiser, self._reference
            try:
                yield self
            finally:
                self.denoiser = policy
        else:
            raise RuntimeError("reference() needs LoRA adapters (gen.add_lora(...)) or a frozen copy "
                               "(gen.snapshot_reference()) for full fine-tuning")

    def enable_gradient_checkpointing(self) -> None:
        if hasattr(self.denoiser, "enable_gradient_checkpointing"):
            self.denoiser.enable_gradient_checkpointing()
