"""DALI graphs for training and validation, one definition for both devices.

``device="gpu"`` decodes with ``mixed`` and runs every image operator on the GPU;
``device="cpu"`` builds the pipeline with ``device_id=None`` and runs the same operators on
DALI's CPU backend. Inputs arrive through one ``external_source`` per pipeline (encoded bytes
and the per-sample random parameters drawn by :mod:`fastforec.data.batch_draws`), so the graph itself
holds no random state.

Cost plan (the CPU backend is the bottleneck on a 2-core machine; see docs/benchmarks.md):

* only the source region that lands inside the crop is decoded (``decoders.image_slice``) and
  resized (``roi_start``/``roi_end``), so at scale 2 a quarter of the pixels is touched and
  nothing is computed for padding;
* the photometric branch works on that unpadded window and runs only for samples that drew it
  (DALI conditionals): ~16 % of samples skip the colour transform, half skip the blur;
* jitter and grayscale are ``brightness_contrast`` plus one per-sample 3x3 colour matrix
  (saturation and hue in YIQ, grayscale = saturation 0 of the jittered image) computed as three
  ``filter`` correlations on the planar image: ~3x cheaper than ``color_twist`` on the CPU;
* the blur is two 1-D ``filter`` passes with per-sample taps sized to the drawn sigma;
* padding, flip, scaling to [0, 1] and HWC -> CHW happen in one ``crop_mirror_normalize``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from nvidia.dali import fn, pipeline_def, types

PIXEL_MAX = 255.0
IMAGE_FILL = 0.0
IGNORE_FILL = 255.0  # label value of padding; the manifest's ignore_index is checked against it
DALI_SEED = 1  # no DALI random operator is used; fixed for completeness

# Names of the external_source outputs, in callback order.
GEOMETRY_INPUTS = ("decode_start", "decode_shape", "roi_start", "roi_end", "size", "flip")
PHOTOMETRIC_INPUTS = ("colour", "brightness", "contrast", "mix_r", "mix_g", "mix_b", "blur", "taps_x", "taps_y")
CHANNELS = 3


def labeled_inputs(*, strong: bool) -> tuple[str, ...]:
    names = ("image", "label") + GEOMETRY_INPUTS
    return tuple(f"l_{n}" for n in names + (PHOTOMETRIC_INPUTS if strong else ()))


def unlabeled_inputs(strong_views: int = 1) -> tuple[str, ...]:
    """The second strong view (``u2_``) shares the weak view's geometry and has its own photometric draw."""
    names = tuple(f"u_{n}" for n in ("image",) + GEOMETRY_INPUTS + PHOTOMETRIC_INPUTS)
    return names + (tuple(f"u2_{n}" for n in PHOTOMETRIC_INPUTS) if strong_views == 2 else ())


@dataclass(frozen=True)
class TrainGraph:
    """Which branches a training pipeline has and the order of its inputs/outputs."""

    labeled: bool
    labeled_strong: bool
    unlabeled: bool
    strong_views: int = 1  # strong views per unlabeled image: 2 for UniMatch, built only then

    @property
    def inputs(self) -> tuple[str, ...]:
        names: tuple[str, ...] = ()
        if self.labeled:
            names += labeled_inputs(strong=self.labeled_strong)
        if self.unlabeled:
            names += unlabeled_inputs(self.strong_views)
        return names

    @property
    def outputs(self) -> tuple[str, ...]:
        names: tuple[str, ...] = ()
        if self.labeled:
            names += ("l_image", "l_label")
        if self.unlabeled:
            names += ("u_weak", "u_strong") + (("u_strong2",) if self.strong_views == 2 else ())
        return names


def _decode(encoded, *, device: str, gray: bool = False):
    # adjust_orientation=False: label PNGs are aligned with the stored pixel grid, so an EXIF
    # rotation applied to the image only would misalign them.
    return fn.decoders.image(encoded, device="mixed" if device == "gpu" else "cpu",
                             output_type=types.GRAY if gray else types.RGB, adjust_orientation=False)


def _decode_region(encoded, start, shape, *, device: str, gray: bool = False):
    """Decode only a region: libjpeg-turbo skips the rows below it and the IDCT of columns
    outside it, so a scale-2 crop decodes about a third of a VOC image."""
    return fn.decoders.image_slice(encoded, start, shape, axis_names="HW", normalized_anchor=False,
                                   normalized_shape=False, device="mixed" if device == "gpu" else "cpu",
                                   output_type=types.GRAY if gray else types.RGB, adjust_orientation=False)


def _window(image, roi_start, roi_end, size, *, nearest: bool = False):
    """The part of the scaled image inside the crop, resized from its source region only."""
    if nearest:
        return fn.resize(image, roi_start=roi_start, roi_end=roi_end, size=size,
                         interp_type=types.INTERP_NN, antialias=False)
    return fn.resize(image, roi_start=roi_start, roi_end=roi_end, size=size, interp_type=types.INTERP_LINEAR,
                     antialias=True)


def _place(window, flip, *, crop: int, fill: float, dtype, layout: str, scale: float):
    """Pad the window bottom/right to crop x crop, mirror the whole crop, scale, transpose."""
    return fn.crop_mirror_normalize(window, crop_h=crop, crop_w=crop, crop_pos_x=0.0, crop_pos_y=0.0,
                                    out_of_bounds_policy="pad", fill_values=fill, mirror=flip,
                                    mean=0.0, std=scale, dtype=dtype, output_layout=layout)


def _planar(image):
    return fn.transpose(image, perm=[2, 0, 1], output_layout="CHW")


def _mix_channels(planar, mix_r, mix_g, mix_b):
    """out_c = sum_k mix_c[k] * in_k per pixel, for uint8 CHW input, saturated to uint8.

    DALI has no cheap per-sample 3x3 colour matrix on the CPU (color_twist's own kernel costs
    ~3x this). Viewed as a (3, H*W) single-channel image, a (3, 1) correlation in "valid" mode
    is exactly one output channel, and ``filter`` runs OpenCV's vectorised filter2D."""
    flat = fn.reshape(planar, shape=[CHANNELS, -1], layout="HW")
    mixed = fn.cat(*[fn.filter(flat, row, mode="valid") for row in (mix_r, mix_g, mix_b)], axis=0)
    return fn.reshape(mixed, shape=fn.cast(planar.shape(), dtype=types.INT32), layout="CHW")


def _photometric(window, colour, brightness, contrast, mix_r, mix_g, mix_b, blur, taps_x, taps_y):
    """Strong view of an uint8 HWC window, as uint8 CHW. Python ``if`` on per-sample predicates
    becomes a DALI conditional: each branch runs only on the samples that take it."""
    if colour:
        adjusted = fn.brightness_contrast(window, brightness=brightness, contrast=contrast)  # HWC only
        strong = _mix_channels(_planar(adjusted), mix_r, mix_g, mix_b)
    else:
        strong = _planar(window)
    if blur:
        # Separable Gaussian, two 1-D passes; uint8 in and out (computed in float inside).
        strong = fn.filter(strong, taps_x, border="reflect_101")
        strong = fn.filter(strong, taps_y, border="reflect_101")
    return strong


def _labeled_branch(inp: dict, *, device: str, crop: int, strong: bool) -> list:
    region = (inp["l_decode_start"], inp["l_decode_shape"])
    image = _decode_region(inp["l_image"], *region, device=device)
    label = _decode_region(inp["l_label"], *region, device=device, gray=True)
    geo = [inp[f"l_{n}"] for n in ("roi_start", "roi_end", "size")]
    window = _window(image, *geo)
    if strong:
        window = _photometric(window, *[inp[f"l_{n}"] for n in PHOTOMETRIC_INPUTS])
    out_image = _place(window, inp["l_flip"], crop=crop, fill=IMAGE_FILL, dtype=types.FLOAT, layout="CHW",
                       scale=PIXEL_MAX)
    out_label = _place(_window(label, *geo, nearest=True), inp["l_flip"], crop=crop, fill=IGNORE_FILL,
                       dtype=types.UINT8, layout="HWC", scale=1.0)
    return [out_image, out_label]


def _unlabeled_branch(inp: dict, *, device: str, crop: int, strong_views: int) -> list:
    image = _decode_region(inp["u_image"], inp["u_decode_start"], inp["u_decode_shape"], device=device)
    window = _window(image, *[inp[f"u_{n}"] for n in ("roi_start", "roi_end", "size")])
    place = dict(crop=crop, fill=IMAGE_FILL, dtype=types.FLOAT, layout="CHW", scale=PIXEL_MAX)
    outputs = [_place(window, inp["u_flip"], **place)]
    # Every strong view starts from the same decoded, resized window: one decode for all views.
    for prefix in ("u_", "u2_")[:strong_views]:
        strong = _photometric(window, *[inp[f"{prefix}{n}"] for n in PHOTOMETRIC_INPUTS])
        outputs.append(_place(strong, inp["u_flip"], **place))
    return outputs


def _device_id(device: str) -> int | None:
    """The current CUDA device (each rank has set its own), or None for DALI's CPU-only mode."""
    if device != "gpu":
        return None
    return torch.cuda.current_device()


def _run_options(*, device: str, batch_size: int, num_threads: int, prefetch: int) -> dict:
    # exec_dynamic: outputs are reference-counted, which makes the zero-copy hand-over to torch
    # in fastforec.data.loader safe.
    return dict(batch_size=batch_size, num_threads=num_threads, device_id=_device_id(device),
                seed=DALI_SEED, exec_dynamic=True, prefetch_queue_depth=prefetch)


def build_train_pipeline(*, graph: TrainGraph, source: Callable[[], Sequence], device: str, crop: int,
                         batch_size: int, num_threads: int, prefetch: int):
    """A built pipeline whose single external_source calls ``source()`` once per batch; it must
    return one list of per-sample arrays per name in ``graph.inputs``."""

    @pipeline_def(enable_conditionals=True)
    def train_pipeline():
        feeds = fn.external_source(source=source, num_outputs=len(graph.inputs), batch=True)
        inp = dict(zip(graph.inputs, feeds))
        outputs = []
        if graph.labeled:
            outputs += _labeled_branch(inp, device=device, crop=crop, strong=graph.labeled_strong)
        if graph.unlabeled:
            outputs += _unlabeled_branch(inp, device=device, crop=crop, strong_views=graph.strong_views)
        return tuple(outputs)

    pipe = train_pipeline(**_run_options(device=device, batch_size=batch_size, num_threads=num_threads,
                                         prefetch=prefetch))
    pipe.build()
    return pipe


def build_val_pipeline(*, source: Callable[[], Sequence], device: str, batch_size: int, num_threads: int):
    """Whole images, padded bottom/right to the largest image of the batch (image 0, label 255)."""

    @pipeline_def
    def val_pipeline():
        encoded, label_encoded = fn.external_source(source=source, num_outputs=2, batch=True)
        image = fn.crop_mirror_normalize(_decode(encoded, device=device), mean=0.0, std=PIXEL_MAX,
                                         dtype=types.FLOAT, output_layout="CHW")
        label = _decode(label_encoded, device=device, gray=True)
        return (fn.pad(image, fill_value=IMAGE_FILL, axes=(1, 2)),
                fn.pad(label, fill_value=IGNORE_FILL, axes=(0, 1)))

    pipe = val_pipeline(**_run_options(device=device, batch_size=batch_size, num_threads=num_threads, prefetch=1))
    pipe.build()
    return pipe


def build_decode_pipeline(*, source: Callable[[], Sequence], device: str, batch_size: int, num_threads: int,
                          prefetch: int):
    """Decode only: the ceiling any augmentation graph on the same feed can reach."""

    @pipeline_def
    def decode_pipeline():
        return _decode(fn.external_source(source=source, batch=True), device=device)

    pipe = decode_pipeline(**_run_options(device=device, batch_size=batch_size, num_threads=num_threads,
                                          prefetch=prefetch))
    pipe.build()
    return pipe
