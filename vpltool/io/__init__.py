"""The file contract: the only package that reads or writes vpltool's formats (docs/file-formats.md).

* :mod:`~vpltool.io.files`: atomic writes (regular files only, the umask respected), JSON, hashes.
* :mod:`~vpltool.io.tensors`: safetensors with contract metadata (kind, format, version, classes, params).
* :mod:`~vpltool.io.kinds`: ``features``, ``prototypes``, ``cam``, ``cam-debug``, one reader and one writer each.
* :mod:`~vpltool.io.training`: a training run's ``log.jsonl``, ``decoder`` and ``decoder-checkpoint``.
* :mod:`~vpltool.io.images`: photos in, masks (VOC palette PNGs), charts and sheets out.
* :mod:`~vpltool.io.photo_files`: a photo file cut short, found before decoding; how a fix says to leave it out.
* :mod:`~vpltool.io.metrics`: `eval --json` results and a run's ``metrics.json``, checked on read.
* :mod:`~vpltool.io.events`: TensorBoard event files (the optional ``tensorboard`` extra).
* :mod:`~vpltool.io.inputs`: a run's inputs by content, and which one changed since a record.
* :mod:`~vpltool.io.guard`: the one check of every path a stage writes (:func:`check_outputs`).
* :mod:`~vpltool.io.provenance`: the image and the run each per-item file records, checked on every read.
* :mod:`~vpltool.io.records`: the records a folder holds (``_stage.json``, ``_run.json``, ``_side.json``, shard
  records, the lock): their names and the reader that checks them.
* :mod:`~vpltool.io.stage`: stage folders (lock, run and completion records, resume) and the dataset they record
  (:func:`vpltool.data.open_recorded` reopens it).

No pickle anywhere. Everything is importable from ``vpltool.io`` itself.
"""

from .cam_inputs import cam_items, read_cam_item
from .digests import check_loaded_files, file_stamp, naming_scope, note_digest, read_as_named
from .events import check_events_folder, check_tensorboard, open_events
from .files import (
    NAME_MAX,
    append_line,
    atomic_path,
    atomic_write,
    by_content,
    check_folder_target,
    check_id,
    check_writable_target,
    comment_problem,
    file_identity,
    id_problem,
    is_regular_file,
    jsonable,
    make_folder,
    name_problem,
    named_file,
    numbered_lines,
    raise_write_error,
    read_json,
    sha256_file,
    text_lines,
    write_json,
    write_text,
)
from .finished import finished_shards, read_stage_record
from .folder_reads import check_folder_reads
from .guard import check_log_target, check_outputs, folder_owner, run_outputs
from .images import (
    MASK_SUFFIX,
    check_image_side,
    image_orientation,
    image_size,
    load_image,
    mask_path,
    mask_size,
    masks_digest,
    read_mask,
    voc_palette,
    write_chart,
    write_mask,
    write_picture,
    write_png,
)
from .inputs import (
    NOT_FILES,
    changed_inputs,
    files_digest,
    not_a_file,
    param_changes,
    shown_path,
    weights_identity,
)
from .kinds import (
    CAM_DEBUG_KIND,
    CAM_KIND,
    FEATURES_KIND,
    PROTOTYPES_KIND,
    CamMaps,
    Features,
    Prototypes,
    cam_path,
    feature_path,
    features_header,
    features_meta,
    item_ids,
    prototypes_meta,
    read_cam,
    read_cam_debug,
    read_feature_tensors,
    read_features,
    read_prototypes,
    same_model,
    token_dtype,
    upsample_maps,
    write_cam,
    write_cam_debug,
    write_features,
    write_prototypes,
)
from .locks import being_written, output_lock, replace_lock
from .made import folder_made, recorded_dtype
from .metrics import check_eval_metrics, is_eval_metrics, read_eval_metrics, read_run_metrics
from .photo_files import cut_short, leave_out, note_source
from .provenance import ITEM_WRITERS, check_item, run_digest, writing_digest
from .records import (
    DATASET_INPUTS,
    DECODER_FILES,
    LOCK_FILE,
    NUMERICS,
    RECORD_DIGEST,
    RUN_DIGEST,
    RUN_RECORD,
    SHARD_RECORD,
    SIDE_RECORD,
    STAGE_RECORD,
    check_numerics,
    dataset_inputs,
    numerics_problem,
    read_record,
    read_side_record,
    record_digest,
    record_stage,
    recorded_dataset_identity,
    recorded_model,
    seal,
    stage_record_path,
    write_stage_record,
)
from .stage import (
    StageFolder,
    StageSummary,
    begin_stage_run,
    changed_keys,
    item_done,
    prepare_stage_dir,
    recorded_ids,
    write_side_record,
)
from .tensors import (
    FORMAT_VERSION,
    TensorFile,
    check_finite,
    check_weight_values,
    check_weights,
    file_numerics,
    header_classes,
    header_numerics,
    is_finite,
    read_header,
    read_safetensors,
    read_safetensors_as,
    read_tensors,
    read_weights,
    save_tensor_file,
    write_tensors,
)
from .training import (
    CHECKPOINT_KIND,
    DECODER_KIND,
    append_log,
    read_checkpoint,
    read_decoder,
    read_log,
    trim_log,
    write_checkpoint,
    write_decoder,
    write_log,
)

__all__ = [
    "check_loaded_files", "check_folder_reads", "file_stamp", "naming_scope", "note_digest", "read_as_named",
    "append_line", "append_log", "atomic_path", "atomic_write", "check_folder_target", "check_writable_target",
    "comment_problem",
    "file_identity",
    "jsonable", "make_folder", "raise_write_error", "read_json", "read_log", "sha256_file", "trim_log", "write_json",
    "write_log",
    "write_text",
    "NAME_MAX", "by_content", "check_id", "id_problem", "is_regular_file", "name_problem", "named_file", "not_a_file",
    "numbered_lines", "text_lines",
    "check_log_target", "run_outputs",
    "MASK_SUFFIX", "check_image_side", "image_orientation",
    "image_size", "load_image", "mask_path", "masks_digest", "read_mask", "voc_palette", "write_chart", "write_mask",
    "write_picture", "write_png", "mask_size",
    "CAM_DEBUG_KIND", "CAM_KIND", "FEATURES_KIND", "PROTOTYPES_KIND", "CamMaps", "Features", "Prototypes",
    "cam_items", "cam_path", "feature_path", "features_header", "features_meta", "item_ids", "read_cam",
    "read_cam_debug", "read_cam_item", "read_feature_tensors", "read_features", "read_prototypes", "prototypes_meta",
    "same_model", "token_dtype", "upsample_maps", "write_cam",
    "write_cam_debug", "write_features", "write_prototypes",
    "LOCK_FILE", "RUN_RECORD", "SHARD_RECORD", "STAGE_RECORD", "StageFolder", "StageSummary", "changed_keys",
    "finished_shards", "item_done",
    "being_written", "output_lock", "replace_lock", "prepare_stage_dir", "read_record", "read_side_record",
    "read_stage_record", "record_stage",
    "recorded_model", "recorded_dataset_identity", "DATASET_INPUTS", "dataset_inputs",
    "stage_record_path", "write_stage_record", "recorded_ids",
    "write_side_record", "SIDE_RECORD", "DECODER_FILES", "check_outputs", "folder_owner", "check_tensorboard",
    "check_events_folder",
    "open_events",
    "FORMAT_VERSION", "TensorFile", "check_finite", "check_weight_values", "check_weights", "is_finite",
    "header_classes", "read_header", "read_safetensors", "read_safetensors_as", "read_tensors",
    "read_weights",
    "save_tensor_file", "write_tensors",
    "CHECKPOINT_KIND", "DECODER_KIND", "read_checkpoint", "read_decoder", "write_checkpoint", "write_decoder",
    "check_eval_metrics", "is_eval_metrics", "read_eval_metrics", "read_run_metrics",
    "NOT_FILES", "changed_inputs", "files_digest", "param_changes", "shown_path", "weights_identity",
    "cut_short", "leave_out", "note_source",
    "ITEM_WRITERS", "RUN_DIGEST", "begin_stage_run", "check_item", "run_digest", "writing_digest",
    "NUMERICS", "check_numerics", "file_numerics", "header_numerics", "numerics_problem", "folder_made",
    "recorded_dtype", "RECORD_DIGEST", "record_digest", "seal",
]  # fmt: skip
