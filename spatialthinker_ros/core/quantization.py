"""Weight-only int8 / int4 quantization of the language model's linear layers (torchao).

torchao's `quantize_` swaps each chosen `nn.Linear` weight for a tensor subclass (int8 per row,
or int4 in groups along the input) that dispatches to a fused dequantize-matmul kernel; it is
PyTorch-native, so the compiled decode step and CUDA graphs take it as they take bf16. Only the
language model's decoder linears are quantized: they are 2.77 B of the 3.75 B parameters and
nearly all the bytes a decode step reads. The vision tower runs once per frame (prefill), so
its bytes do not bound decode speed; the embedding is read one row per token and is tied to
`lm_head`, the layer whose errors flip the argmax directly: both stay in the model dtype.

Kernels: int8 (`Int8WeightOnlyConfig`, per-row scales) runs on CUDA and the CPU in any float
dtype. int4 on CUDA is tinygemm (`Int4WeightOnlyConfig`, tile-packed; bfloat16 and sm80+ only),
on the CPU the prototype `PrototypeInt4WeightOnlyConfig` (`_weight_int4pack_mm_for_cpu`). A
probe layer is quantized and run on the target device first, and the quantized model runs one
token before the load succeeds, so a missing kernel is one `ModelLoadError` line at load, never
a silent bf16 fallback (torchao itself skips a layer whose shape it cannot take: checked here).
"""

from __future__ import annotations

from typing import Any

from .text import one_line
from .types import ModelLoadError

MODES = ("none", "int8", "int4")
# int4 group sizes the kernels take, largest first: each layer gets the largest that divides its
# in_features (Qwen2.5-VL-3B: 2048 and 11008 = 86 x 128, so 128 everywhere).
INT4_GROUP_SIZES = (128, 64, 32)
INSTALL_HINT = "pip install 'spatialthinker_ros[quant]'"


def _fail(mode: str, device: str, reason: object) -> ModelLoadError:
    return ModelLoadError(one_line(f"quantization {mode} is not available on {device}: {reason}",
                                   400))  # fmt: skip


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return type(exc).__name__ + (f": {text.splitlines()[0]}" if text else "")


def config_for(mode: str, device_type: str, group_size: int = 128) -> Any:
    """The torchao config of `mode` on a device type ("cuda" or "cpu"). torchao's default
    `set_inductor_config=True` stays: it sets inductor's recommended options (coordinate descent
    tuning, mixed int8 matmuls) for the whole process, which its published speeds assume."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if mode == "int8":
        return Int8WeightOnlyConfig()  # per-row scales
    if mode != "int4":
        raise ValueError(f"unknown quantization mode {mode!r}")
    if device_type == "cuda":
        return Int4WeightOnlyConfig(group_size=group_size,
                                    int4_packing_format="tile_packed_to_4d")  # fmt: skip
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=group_size)


def is_quantized(weight: Any) -> bool:
    from torchao.utils import TorchAOBaseTensor

    return isinstance(weight, TorchAOBaseTensor)


def probe(mode: str, device: str, dtype: Any, config: Any = None) -> None:
    """Quantize one small linear layer on `device` in `dtype` and run it once; raises
    ModelLoadError naming the mode and why where there is no kernel."""
    import torch

    try:
        config = config if config is not None else config_for(mode, torch.device(device).type)
        from torchao.quantization import quantize_

        layer = torch.nn.Linear(256, 64, bias=False, dtype=dtype, device=device)
        quantize_(layer, config)
        if not is_quantized(layer.weight):
            raise RuntimeError("torchao left the probe layer unquantized")
        with torch.inference_mode():
            layer(torch.ones(2, 256, dtype=dtype, device=device))
    except ImportError as exc:
        raise _fail(mode, device, f"torchao is not installed ({INSTALL_HINT}): {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - kernels fail as AssertionError, RuntimeError, ...
        hint = (" (int4 on CUDA is tinygemm: dtype bfloat16 on an sm80+ GPU)"
                if mode == "int4" and device.startswith("cuda") else "")  # fmt: skip
        raise _fail(mode, device, _reason(exc) + hint) from exc


def _targets(language_model: Any) -> dict[str, Any]:
    """The decoder's nn.Linear layers by name (attention and MLP projections)."""
    import torch

    return {name: m for name, m in language_model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.startswith("layers.")}  # fmt: skip


def int4_group_size(in_features: int) -> int | None:
    return next((g for g in INT4_GROUP_SIZES if in_features % g == 0), None)


def quantize_language_model(model: Any, mode: str, device: str) -> str:
    """Quantize the decoder linears of a Qwen2.5-VL model in place (weights moved to `device`
    as they are packed), check every one was, and run one token through the language model.
    Returns a one-line description; raises ModelLoadError with one line on any failure."""
    if mode == "none":
        return "none"
    import torch

    language_model = model.model.language_model
    dtype = next(language_model.parameters()).dtype
    probe(mode, device, dtype)
    targets = _targets(language_model)
    try:
        from torchao.quantization import quantize_

        groups: dict[int, list[str]] = {}
        for name, layer in targets.items():
            size = int4_group_size(layer.in_features) if mode == "int4" else 0
            if size is None:
                raise ValueError(f"{name} has {layer.in_features} input features: no int4 group "
                                 f"size of {INT4_GROUP_SIZES} divides it")  # fmt: skip
            groups.setdefault(size, []).append(name)
        for size, names in groups.items():
            chosen = set(names)
            quantize_(language_model, config_for(mode, torch.device(device).type, size or 128),
                      filter_fn=lambda _m, fqn, chosen=chosen: fqn in chosen, device=device)
        left = [n for n, layer in targets.items() if not is_quantized(layer.weight)]
        if left:
            raise RuntimeError(f"torchao left {len(left)} layers unquantized (first: {left[0]})")
        language_model.to(device)
        with torch.inference_mode():
            language_model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, whatever torchao raises
        raise _fail(mode, device, _reason(exc)) from exc
    sizes = sorted({s for s in groups if s})
    detail = f", groups of {'/'.join(map(str, sizes))}" if sizes else ", per-row scales"
    return (f"{mode} weight-only (torchao) on {len(targets)} decoder linears{detail}; vision, "
            f"embedding and lm_head in {str(dtype).replace('torch.', '')}")


def tensor_bytes(tensor: Any) -> int:
    """Bytes a tensor really stores: a torchao subclass's inner tensors (packed data, scales,
    zero points), a plain tensor's elements."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, n)) for n in names
                   if getattr(tensor, n, None) is not None)  # fmt: skip
    return tensor.numel() * tensor.element_size()


def module_bytes(module: Any, seen: set[int] | None = None) -> int:
    """Bytes of a module's parameters and buffers (shared ones once, via `seen`)."""
    seen = set() if seen is None else seen
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += tensor_bytes(t)
    return total
