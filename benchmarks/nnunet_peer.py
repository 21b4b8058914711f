"""nnU-Net v2 as the peer of `benchmarks/inference.py`: a "trained model folder" with random weights, and its run.

The folder is what `nnUNetv2_train` leaves behind (dataset.json, plans.json, fold_0/checkpoint_final.pth), so
nnU-Net's own `nnUNetPredictor.initialize_from_trained_model_folder` loads it exactly as it loads a trained model.
Its 3d_fullres configuration is planned the way nnU-Net's default `ExperimentPlanner` (plans "nnUNetPlans",
`PlainConvUNet`) plans one, except that the target spacing and patch size are given (MaskMed's) instead of searched
for: stages, strides and kernel sizes come from nnU-Net's `get_pool_and_conv_props` with the planner's settings
(feature maps down to 4 voxels, 32 features doubling up to 320, two convs per stage in the encoder and the decoder,
instance norm, LeakyReLU), and the resampling functions from the planner's own `determine_resampling` /
`determine_segmentation_softmax_export_fn`. The weights are those of a freshly initialised network, as built by
`nnUNetTrainer.build_network_architecture` (He init).

Install (keeps the CPU torch: nnU-Net's own requirements would pull a CUDA build):

    pip install --no-deps nnunetv2 "acvl-utils>=0.2.6,<0.3" batchgenerators batchgeneratorsv2
    pip install threadpoolctl blosc2 pandas scikit-image nibabel connected-components-3d matplotlib seaborn \
        scikit-learn
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainer"
DATASET_NAME = "Dataset999_MaskMedBench"


def set_environment(root: str | os.PathLike[str], threads: int) -> None:
    """nnU-Net's folders (it warns without them) and its thread count; call before importing nnunetv2.

    ``nnUNet_def_n_proc`` is also the torch thread count nnU-Net sets for prediction and export (default 8).
    """
    root = Path(root)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(folder)
    os.environ["nnUNet_def_n_proc"] = str(threads)  # noqa: SIM112 - nnU-Net reads this exact name
    os.environ.setdefault("nnUNet_compile", "false")  # noqa: SIM112


def plan_architecture(spacing_zyx, patch_zyx) -> dict:
    """The `architecture` entry nnU-Net's default planner writes for this spacing and patch size."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from dynamic_network_architectures.building_blocks.helper import convert_dim_to_conv_op, get_matching_instancenorm
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    # ExperimentPlanner.__init__ (nnunetv2 2.x): UNet_featuremap_min_edge_length, UNet_base_num_features,
    # UNet_max_features_3d, UNet_blocks_per_stage_encoder / _decoder.
    min_edge, base_features, max_features, blocks = 4, 32, 320, 2
    _, strides, kernels, patch, _ = get_pool_and_conv_props(list(spacing_zyx), list(patch_zyx), min_edge, 999999)
    if tuple(int(p) for p in patch) != tuple(patch_zyx):
        raise ValueError(f"nnU-Net would change the patch {tuple(patch_zyx)} to {tuple(int(p) for p in patch)}")
    stages = len(strides)
    conv_op = convert_dim_to_conv_op(3)
    norm = get_matching_instancenorm(conv_op)
    return {
        "network_class_name": PlainConvUNet.__module__ + "." + PlainConvUNet.__name__,
        "arch_kwargs": {
            "n_stages": stages,
            "features_per_stage": [min(max_features, base_features * 2**i) for i in range(stages)],
            "conv_op": conv_op.__module__ + "." + conv_op.__name__,
            "kernel_sizes": [list(k) for k in kernels],
            "strides": [list(s) for s in strides],
            "n_conv_per_stage": [blocks] * stages,
            "n_conv_per_stage_decoder": [blocks] * (stages - 1),
            "conv_bias": True,
            "norm_op": norm.__module__ + "." + norm.__name__,
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def build_model_folder(folder, spacing_zyx, patch_zyx, label_names: list[str], intensity, seed: int = 0) -> Path:
    """Write an nnU-Net trained-model folder with random weights; returns ``folder``.

    ``intensity``: an object with clip_low, clip_high, mean and std (HU), used as the CT normalisation's foreground
    properties (MaskMed's plans hold the same four numbers, so both networks see the same normalised input).
    """
    import torch
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(folder)
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    labels = {"background": 0, **{name: index + 1 for index, name in enumerate(label_names)}}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}

    # The planner's resampling choices do not depend on the instance (spline order 3 for images, linear for logits).
    data_fn, data_kwargs, seg_fn, seg_kwargs = ExperimentPlanner.determine_resampling(None)
    probabilities_fn, probabilities_kwargs = ExperimentPlanner.determine_segmentation_softmax_export_fn(None)
    configuration = {
        "data_identifier": f"nnUNetPlans_{CONFIGURATION}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch_zyx),
        "median_image_size_in_voxels": list(patch_zyx),
        "spacing": [float(s) for s in spacing_zyx],
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": data_fn.__name__,
        "resampling_fn_seg": seg_fn.__name__,
        "resampling_fn_data_kwargs": data_kwargs,
        "resampling_fn_seg_kwargs": seg_kwargs,
        "resampling_fn_probabilities": probabilities_fn.__name__,
        "resampling_fn_probabilities_kwargs": probabilities_kwargs,
        "architecture": plan_architecture(spacing_zyx, patch_zyx),
        "batch_dice": False,
    }
    plans = {
        "dataset_name": DATASET_NAME,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [float(s) for s in spacing_zyx],
        "original_median_shape_after_transp": list(patch_zyx),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],  # what the planner picks for isotropic target spacing
        "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": float(intensity.clip_high) + 500.0,
                "mean": float(intensity.mean),
                "median": float(intensity.mean),
                "min": float(intensity.clip_low) - 40.0,
                "percentile_00_5": float(intensity.clip_low),
                "percentile_99_5": float(intensity.clip_high),
                "std": float(intensity.std),
            }
        },
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))

    torch.manual_seed(seed)
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(CONFIGURATION)
    network = nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager, 1, len(labels), enable_deep_supervision=False
    )
    checkpoint = {
        "network_weights": network.state_dict(),
        "init_args": {"plans": plans, "configuration": CONFIGURATION, "fold": 0, "dataset_json": dataset},
        "trainer_name": TRAINER,
        "inference_allowed_mirroring_axes": (0, 1, 2),
        "current_epoch": 0,
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def make_predictor(folder, tta: bool):
    """nnU-Net's predictor on the CPU, loaded from ``folder`` (call `set_environment` first)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=tta,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    return predictor


def predict_file(predictor, image_path, output_path) -> Path:
    """One case, file to file, all in this process (no preprocessing or export workers).

    ``output_path`` must end with the dataset's file ending (.nii.gz).
    """
    output_path = Path(output_path)
    truncated = str(output_path)[: -len(".nii.gz")]
    predictor.predict_from_files_sequential([[str(image_path)]], [truncated], save_probabilities=False, overwrite=True)
    return output_path


def network_parameters(predictor) -> int:
    return sum(p.numel() for p in predictor.network.parameters())
